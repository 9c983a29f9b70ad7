//! Where each key and value of a YAML document starts, by dotted path.
//!
//! serde_yaml reports positions only for its own (syntax and type) errors. The semantic checks in
//! `config` (a missing script, two apps on one route, …) need positions too, so the text is walked
//! once more with yaml-rust2's marked events, recording the position of every mapping key and
//! every value under a path such as `apps.api.mount` or `apps.api.hosts.1`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Positions of keys and values by dotted path. Empty when the text does not parse.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    keys: HashMap<String, Location>,
    values: HashMap<String, Location>,
}

impl Locator {
    pub fn new(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Locator::default();
        }
        Locator {
            keys: walker.keys,
            values: walker.values,
        }
    }

    /// The position of the key at `path`, else of its value, else of the nearest ancestor.
    pub fn key(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.keys.get(p).or_else(|| self.values.get(p)) {
                return Some(*l);
            }
            p = &p[..p.rfind('.')?];
        }
    }

    /// The position of the value at `path`, else of its key (or nearest ancestor).
    pub fn value(&self, path: &str) -> Option<Location> {
        self.values.get(path).copied().or_else(|| self.key(path))
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    keys: HashMap<String, Location>,
    values: HashMap<String, Location>,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

impl Walker {
    /// Handles a node that starts at `mark`; returns the node's path if it is a value.
    fn node(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let loc = Location {
            line: mark.line(),
            column: mark.col() + 1,
        };
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // A key. Complex (non-scalar) keys get a placeholder and are not located.
                    let name = scalar.unwrap_or("?").to_string();
                    self.keys.insert(join(path, &name), loc);
                    *key = Some(name);
                    return None;
                }
                Some(k) => join(path, &k),
            },
            Some(Frame::Seq { path, index }) => {
                *index += 1;
                join(path, &(*index - 1).to_string())
            }
        };
        self.values.entry(path.clone()).or_insert(loc);
        Some(path)
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref s, ..) => {
                self.node(Some(s), mark);
            }
            Event::Alias(_) => {
                self.node(None, mark);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(None, mark) {
                    self.stack.push(Frame::Map { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.node(None, mark) {
                    self.stack.push(Frame::Seq { path, index: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_and_values() {
        let text = "listen: [\"a\", \"b\"]\napps:\n  web:\n    python: python3\n    hosts:\n      - x.com\n      - y.com\n";
        let l = Locator::new(text);
        assert_eq!(
            l.key("apps.web.python"),
            Some(Location { line: 4, column: 5 })
        );
        assert_eq!(
            l.value("apps.web.python"),
            Some(Location {
                line: 4,
                column: 13
            })
        );
        assert_eq!(
            l.value("apps.web.hosts.1"),
            Some(Location { line: 7, column: 9 })
        );
        assert_eq!(
            l.value("listen.1"),
            Some(Location {
                line: 1,
                column: 15
            })
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(l.key("apps.web.nothing"), l.key("apps.web"));
        assert_eq!(l.key("apps.web"), Some(Location { line: 3, column: 3 }));
    }

    #[test]
    fn unparsable_text_locates_nothing() {
        assert_eq!(Locator::new("a: [").key("a"), None);
    }
}
