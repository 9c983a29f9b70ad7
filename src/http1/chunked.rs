//! The chunked request body (RFC 9112 §7.1), fed in pieces: sizes, extensions, CRLFs and
//! trailers checked byte by byte, so a body ends exactly where every reader agrees it does.

use super::{field_line, is_field_byte, is_tchar, strip_cr, Rejection, Rejection::Malformed};

/// Trailer fields that would change how the request is framed, routed or authorized if a
/// recipient merged them into the head (RFC 9110 §6.5.1).
const FORBIDDEN_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"content-type",
    b"content-encoding",
    b"content-range",
    b"trailer",
    b"authorization",
    b"cookie",
    b"expect",
    b"connection",
    b"te",
];

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Validates a chunked body as it streams past, and finds where it ends.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    SizeLine,
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
    Done,
}

impl Chunked {
    pub fn new(max_trailer_bytes: usize) -> Self {
        Chunked {
            state: ChunkState::SizeLine,
            line: Vec::new(),
            trailer_bytes: 0,
            max_trailer_bytes,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes body bytes from `input`, returning how many belong to the body (all of them
    /// unless the body ends inside `input`).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Rejection> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let n = left.min((input.len() - i) as u64);
                    i += n as usize;
                    self.state = if n == left {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataCr => {
                    if input[i] != b'\r' {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if input[i] != b'\n' {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = ChunkState::SizeLine;
                }
                ChunkState::SizeLine | ChunkState::Trailers => {
                    let b = input[i];
                    i += 1;
                    if b != b'\n' {
                        self.line.push(b);
                        let limit = if self.state == ChunkState::SizeLine {
                            MAX_CHUNK_LINE
                        } else {
                            self.max_trailer_bytes
                        };
                        if self.line.len() > limit {
                            return Err(Malformed("chunk-size line or trailer too long"));
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = strip_cr(&line)?;
                    if self.state == ChunkState::SizeLine {
                        let size = chunk_size(line)?;
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    } else if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else {
                        self.trailer_bytes += line.len() + 2;
                        if self.trailer_bytes > self.max_trailer_bytes {
                            return Err(Malformed("trailers too large"));
                        }
                        let (name, _) = field_line(line)?;
                        let lower = name.to_ascii_lowercase();
                        if FORBIDDEN_TRAILERS.contains(&lower.as_slice()) {
                            return Err(Malformed("forbidden trailer field"));
                        }
                    }
                }
            }
        }
        Ok(i)
    }
}

/// `1*HEXDIG *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_size(line: &[u8]) -> Result<u64, Rejection> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Malformed("invalid chunk size"));
    }
    // Leading zeros are allowed; the value must fit in 64 bits.
    let significant = line[..digits]
        .iter()
        .skip_while(|&&b| b == b'0')
        .copied()
        .collect::<Vec<u8>>();
    if significant.len() > 16 {
        return Err(Malformed("chunk size too large"));
    }
    let size = if significant.is_empty() {
        0
    } else {
        let text =
            std::str::from_utf8(&significant).map_err(|_| Malformed("invalid chunk size"))?;
        u64::from_str_radix(text, 16).map_err(|_| Malformed("invalid chunk size"))?
    };
    chunk_extensions(&line[digits..])?;
    Ok(size)
}

fn chunk_extensions(mut rest: &[u8]) -> Result<(), Rejection> {
    const BAD: Rejection = Malformed("invalid chunk extension");
    let skip_bws =
        |s: &[u8]| -> usize { s.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    while !rest.is_empty() {
        rest = &rest[skip_bws(rest)..];
        // Whitespace after the size is only allowed before an extension.
        let Some((b';', after)) = rest.split_first() else {
            return Err(BAD);
        };
        rest = &after[skip_bws(after)..];
        let name_len = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name_len == 0 {
            return Err(BAD);
        }
        rest = &rest[name_len..];
        let ws = skip_bws(rest);
        if rest.get(ws) != Some(&b'=') {
            // No value; what follows must be another extension.
            if ws == rest.len() {
                return Ok(());
            }
            continue;
        }
        rest = &rest[ws + 1..];
        rest = &rest[skip_bws(rest)..];
        if rest.first() == Some(&b'"') {
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => return Err(BAD),
                    Some(b'"') => break,
                    Some(b'\\') => match rest.get(i + 1) {
                        Some(&c) if is_field_byte(c) => i += 2,
                        _ => return Err(BAD),
                    },
                    Some(&c) if is_field_byte(c) => i += 1,
                    Some(_) => return Err(BAD),
                }
            }
            rest = &rest[i + 1..];
        } else {
            let v = rest.iter().take_while(|&&b| is_tchar(b)).count();
            if v == 0 {
                return Err(BAD);
            }
            rest = &rest[v..];
        }
    }
    Ok(())
}
