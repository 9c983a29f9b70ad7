//! Python tracebacks in a child's output, gathered into one record for the JSON log: from
//! `Traceback (most recent call last):` through its indented frames to the exception's line,
//! with chained exceptions ("During handling of the above exception…", "The above exception
//! was the direct cause…") kept in the same record. Pure: the caller feeds lines and says when
//! no line came for a while.

const START: &str = "Traceback (most recent call last):";
const CHAINS: [&str; 2] = [
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
];

/// A traceback being gathered.
#[derive(Debug, Default)]
pub(super) struct Gathering {
    lines: Vec<String>,
    /// The exception's own line has come: what follows ends it unless it chains.
    ended: bool,
}

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fed {
    /// Part of the traceback.
    Taken,
    /// Not part of it: the traceback (its text) is complete, and the line is logged as usual.
    Done(String),
}

impl Gathering {
    /// Whether `line` starts a traceback.
    pub(super) fn starts(line: &str) -> bool {
        line.starts_with(START)
    }

    pub(super) fn new(first: &str) -> Self {
        Gathering {
            lines: vec![first.to_string()],
            ended: false,
        }
    }

    pub(super) fn feed(&mut self, line: &str) -> Fed {
        let indented = line.starts_with(' ') || line.starts_with('\t');
        let take = if Self::starts(line) {
            self.ended = false;
            true
        } else if line.is_empty() || CHAINS.contains(&line) {
            // Between a chained exception's parts (trailing blanks are left out of the text).
            true
        } else if self.ended {
            false
        } else {
            // The first line that is not a frame is the exception's.
            self.ended = !indented;
            true
        };
        if take {
            self.lines.push(line.to_string());
            return Fed::Taken;
        }
        Fed::Done(self.text())
    }

    /// The whole traceback so far (trailing blank lines left out): when no more lines come.
    pub(super) fn text(&self) -> String {
        let end = self
            .lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        self.lines[..end].join("\n")
    }

    /// The exception's line ("ValueError: boom"): the record's message.
    pub(super) fn summary(text: &str) -> &str {
        text.lines()
            .rev()
            .find(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
            .unwrap_or(START)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `lines` after the first; the traceback's text and the line that ended it.
    fn gather(lines: &[&str]) -> (String, Option<String>) {
        let mut g = Gathering::new(lines[0]);
        for l in &lines[1..] {
            if let Fed::Done(text) = g.feed(l) {
                return (text, Some(l.to_string()));
            }
        }
        (g.text(), None)
    }

    #[test]
    fn a_traceback_is_gathered_to_its_exception_line_with_its_chains() {
        let simple = [
            "Traceback (most recent call last):",
            "  File \"/srv/app.py\", line 3, in application",
            "    raise ValueError('boom')",
            "    ^^^^^^^^^^^^^^^^^^^^^^^^",
            "ValueError: boom",
            "next line",
        ];
        let (text, after) = gather(&simple);
        assert_eq!(text, simple[..5].join("\n"));
        assert_eq!(after.as_deref(), Some("next line"));
        assert_eq!(Gathering::summary(&text), "ValueError: boom");

        let chained = [
            "Traceback (most recent call last):",
            "  File \"/srv/app.py\", line 3, in application",
            "KeyError: 'x'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"/srv/app.py\", line 5, in application",
            "RuntimeError: wrapped",
            "",
            "GET /next",
        ];
        let (text, after) = gather(&chained);
        assert_eq!(text, chained[..9].join("\n"));
        assert_eq!(after.as_deref(), Some("GET /next"));
        assert_eq!(Gathering::summary(&text), "RuntimeError: wrapped");
        // Cut short (no more output): what came is the record.
        let (text, after) = gather(&chained[..3]);
        assert_eq!((text.lines().count(), after), (3, None));
    }
}
