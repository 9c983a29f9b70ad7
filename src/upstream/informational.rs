//! Counts the informational (1xx) heads a child sends before its final response, so that no
//! read hands hyper more of them than one past the limit. hyper parses every head a read
//! brought in one loop, and a child writing `100 Continue` at full speed fills each read with
//! hundreds; cut there, a flood costs a few heads' parsing per request. Hand-written: it only
//! recognises `HTTP/1.x 1..` heads and their ends, and stops at anything else, which hyper
//! then judges (so it can only let more through, never refuse a response).

/// What the scan expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not looking: a final head came, or something that is not a plain 1xx head.
    Off,
    /// At the start of a head: its first bytes so far.
    HeadStart { got: [u8; 10], len: usize },
    /// Inside an informational head; whether the line so far is empty (a CR at most).
    InHead { line_empty: bool },
}

/// The scan of one connection's responses.
#[derive(Debug)]
pub(super) struct Scan {
    state: State,
    /// Informational heads of the current response so far.
    seen: u32,
    /// How many are handed on; the read is cut after the one past it.
    limit: u32,
}

/// The start of a status line saying an informational response.
fn is_informational(start: &[u8; 10]) -> bool {
    start.starts_with(b"HTTP/1.") && start[8] == b' ' && start[9] == b'1'
}

impl Scan {
    pub(super) fn new(limit: u32) -> Self {
        Scan {
            state: State::Off,
            seen: 0,
            limit,
        }
    }

    /// A request went out: its response's heads start now.
    pub(super) fn expect_response(&mut self) {
        self.state = State::HeadStart {
            got: [0; 10],
            len: 0,
        };
        self.seen = 0;
    }

    /// Reads `bytes`, the next the child sent; returns how many of them to hand on (fewer
    /// only when they hold the informational head one past the limit: up to its end).
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            self.state = match self.state {
                State::Off => return None,
                State::HeadStart { mut got, len } => {
                    got[len] = b;
                    match len + 1 {
                        10 if is_informational(&got) => State::InHead { line_empty: false },
                        10 => State::Off,
                        n => State::HeadStart { got, len: n },
                    }
                }
                State::InHead { line_empty } => match b {
                    b'\n' if line_empty => {
                        self.seen += 1;
                        if self.seen > self.limit {
                            self.state = State::Off;
                            return Some(i + 1);
                        }
                        State::HeadStart {
                            got: [0; 10],
                            len: 0,
                        }
                    }
                    b'\n' => State::InHead { line_empty: true },
                    b'\r' => State::InHead { line_empty },
                    _ => State::InHead { line_empty: false },
                },
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Scan;

    #[test]
    fn a_read_is_cut_after_the_head_one_past_the_limit() {
        let head = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut scan = Scan::new(2);
        scan.expect_response();
        let flood = head.repeat(5);
        assert_eq!(scan.scan(&flood), Some(head.len() * 3));
        assert_eq!(scan.scan(&flood), None, "off once cut");
    }

    #[test]
    fn heads_split_across_reads_and_bare_line_feeds_are_counted() {
        let mut scan = Scan::new(1);
        scan.expect_response();
        assert_eq!(scan.scan(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r"), None);
        assert_eq!(scan.scan(b"\n\r\nHTTP/1.1 10"), None);
        assert_eq!(scan.scan(b"0 Continue\n\nrest"), Some(12));
    }

    #[test]
    fn a_final_head_or_anything_else_ends_the_scan() {
        let mut scan = Scan::new(1);
        scan.expect_response();
        let bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nHTTP/1.1 100 x\r\n\r\nHTTP/1.1 100 x\r\n\r\n";
        assert_eq!(scan.scan(bytes), None, "a body may look like heads");
        scan.expect_response();
        assert_eq!(scan.scan(b"garbage\r\n\r\n".repeat(3).as_slice()), None);
        let mut off = Scan::new(0);
        assert_eq!(
            off.scan(b"HTTP/1.1 100 Continue\r\n\r\n"),
            None,
            "no request sent"
        );
    }
}
