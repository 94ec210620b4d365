//! Cutting a scanner's byte stream into frames (one read each). Pure: bytes
//! in, frames out, however the bytes were split across reads.
//!
//! Rules:
//! * Line modes (`cr`, `lf`, `crlf`): any CR or LF ends a frame. A scanner
//!   set to CRLF, or one that mixes terminators, so never yields a bogus read
//!   from the LF that follows a CR.
//! * Byte mode: only that byte ends a frame; CR and LF are data (and the
//!   decoder will call them noise).
//! * Empty frames (two terminators in a row, the LF of a CRLF, a stray
//!   terminator at power-up) carry no read and are dropped without an event.
//! * A frame longer than `max_len` is emitted at once, cut to `max_len`
//!   bytes and marked truncated; the rest of it, up to the next terminator,
//!   is discarded, but never more than `max_len` bytes without a trace: each
//!   further `max_len` bytes is another truncated frame. A scanner whose
//!   suffix does not match the profile never sends the terminator, and
//!   silently discarding until it came would lose every later read without
//!   a count. Memory per scanner is bounded by `max_len`.
//! * An unfinished frame the caller finds idle too long (the scanner's
//!   `frame_timeout_ms`) is taken out whole and marked incomplete
//!   ([`Framer::take_idle`]), so it cannot spoil the next read.

use firmware_config::Terminator;

/// One read, terminator removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub truncated: bool,
    /// No terminator came within the frame timeout.
    pub incomplete: bool,
}

#[derive(Debug)]
pub struct Framer {
    byte_terminator: Option<u8>,
    max_len: usize,
    buf: Vec<u8>,
    /// Inside an over-long frame whose first `max_len` bytes were emitted.
    discarding: bool,
}

impl Framer {
    pub fn new(terminator: Terminator, max_len: usize) -> Framer {
        Framer {
            byte_terminator: match terminator {
                Terminator::Byte(b) => Some(b),
                Terminator::Cr | Terminator::Lf | Terminator::Crlf => None,
            },
            // A zero limit would emit an endless stream of empty truncated frames.
            max_len: max_len.max(1),
            buf: Vec::with_capacity(max_len.clamp(1, 1024)),
            discarding: false,
        }
    }

    fn ends_frame(&self, b: u8) -> bool {
        match self.byte_terminator {
            Some(t) => b == t,
            None => b == b'\r' || b == b'\n',
        }
    }

    /// Feeds bytes as they arrived; complete frames are appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<Frame>) {
        for &b in input {
            if self.ends_frame(b) {
                if self.discarding {
                    // The tail of an over-long read, already reported.
                    self.buf.clear();
                    self.discarding = false;
                } else if !self.buf.is_empty() {
                    out.push(Frame {
                        bytes: std::mem::take(&mut self.buf),
                        truncated: false,
                        incomplete: false,
                    });
                }
            } else {
                if self.buf.len() == self.max_len {
                    out.push(Frame {
                        bytes: std::mem::take(&mut self.buf),
                        truncated: true,
                        incomplete: false,
                    });
                    self.discarding = true;
                }
                self.buf.push(b);
            }
        }
    }

    /// Bytes of an unfinished frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The unfinished frame, whose terminator did not come in time: marked
    /// incomplete, and what arrives next starts a new frame. `None` when
    /// there is none, or when it is the tail of an over-long read already
    /// reported truncated (dropped: it was counted then).
    pub fn take_idle(&mut self) -> Option<Frame> {
        let bytes = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.discarding) || bytes.is_empty() {
            return None;
        }
        Some(Frame {
            bytes,
            truncated: false,
            incomplete: true,
        })
    }

    /// Forgets an unfinished frame (the port went away mid-read; what comes
    /// after a reconnect is a new read).
    pub fn reset(&mut self) -> usize {
        let dropped = self.buf.len();
        self.buf.clear();
        self.discarding = false;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(t: Terminator, max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut f = Framer::new(t, max);
        let mut out = vec![];
        for c in chunks {
            f.push(c, &mut out);
        }
        out.into_iter()
            .map(|fr| {
                (
                    String::from_utf8_lossy(&fr.bytes).into_owned(),
                    fr.truncated,
                )
            })
            .collect()
    }

    fn ok(s: &str) -> (String, bool) {
        (s.to_owned(), false)
    }

    #[test]
    fn mixed_line_endings_yield_no_empty_frames() {
        let got = frames(Terminator::Cr, 64, &[b"A\rB\r\nC\nD\n\rE\r\r\n\nF\r"]);
        assert_eq!(
            got,
            vec![ok("A"), ok("B"), ok("C"), ok("D"), ok("E"), ok("F")]
        );
        assert_eq!(
            frames(Terminator::Crlf, 64, &[b"A\r\nB\r\n"]),
            vec![ok("A"), ok("B")]
        );
        assert_eq!(frames(Terminator::Lf, 64, &[b"\n\nA\n"]), vec![ok("A")]);
    }

    #[test]
    fn an_idle_unfinished_frame_is_taken_out_whole_and_spoils_nothing() {
        let mut f = Framer::new(Terminator::Cr, 16);
        let mut out = vec![];
        assert_eq!(f.take_idle(), None, "nothing pending");
        f.push(b"\x00", &mut out);
        let idle = f.take_idle().expect("the stray byte");
        assert_eq!(
            (idle.bytes.as_slice(), idle.truncated, idle.incomplete),
            (&b"\x00"[..], false, true)
        );
        f.push(b"]E4963850\r", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, b"]E4963850");
        assert!(!out[0].incomplete);
        // The tail of an over-long read was reported truncated already.
        out.clear();
        f.push(b"0123456789abcdefghij", &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].truncated);
        assert_eq!(f.take_idle(), None);
        f.push(b"AB\r", &mut out);
        assert_eq!(out.last().map(|fr| fr.bytes.as_slice()), Some(&b"AB"[..]));
    }

    #[test]
    fn a_cr_and_its_lf_in_different_reads() {
        let got = frames(
            Terminator::Cr,
            64,
            &[b"]E04006381333931\r", b"\n]E496385074\r", b"\n"],
        );
        assert_eq!(got, vec![ok("]E04006381333931"), ok("]E496385074")]);
    }

    #[test]
    fn byte_terminator_makes_cr_and_lf_data() {
        let got = frames(Terminator::Byte(0x03), 64, &[b"A\rB\x03\x03C\x03"]);
        assert_eq!(got, vec![ok("A\rB"), ok("C")]);
    }

    #[test]
    fn a_frame_split_into_single_bytes() {
        let data = b"]C10104006381333931\x1d21X\r";
        let chunks: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(
            frames(Terminator::Cr, 64, &chunks),
            vec![ok("]C10104006381333931\x1d21X")]
        );
    }

    #[test]
    fn over_long_frames_are_cut_once_and_the_next_read_survives() {
        let mut long = vec![b'9'; 30];
        long.extend_from_slice(b"\r\nOK\r");
        let got = frames(Terminator::Cr, 16, &[&long[..10], &long[10..]]);
        assert_eq!(got, vec![("9".repeat(16), true), ok("OK")]);
        // Exactly max_len is not truncated.
        assert_eq!(frames(Terminator::Cr, 4, &[b"1234\r"]), vec![ok("1234")]);
        assert_eq!(
            frames(Terminator::Cr, 4, &[b"12345\r"]),
            vec![("1234".to_owned(), true)]
        );
    }

    #[test]
    fn reads_without_the_profiles_terminator_are_never_discarded_without_a_trace() {
        // The profile says CR; the scanner was set to send a tab suffix.
        let reads: Vec<u8> = (0..10).flat_map(|_| *b"4006381333931\t").collect();
        let got = frames(Terminator::Cr, 16, &[&reads]);
        assert!(got
            .iter()
            .all(|(text, truncated)| *truncated && text.len() == 16));
        assert_eq!(
            got.len(),
            reads.len() / 16,
            "every 16 bytes is a truncated read to count, not one for the whole stream: {got:?}"
        );
        // The terminator, when it comes, ends the cut and the next read survives.
        let mut mixed = reads.clone();
        mixed.extend_from_slice(b"\r4006381333931\r");
        let got = frames(Terminator::Cr, 16, &[&mixed]);
        assert_eq!(got.last(), Some(&ok("4006381333931")));
    }

    #[test]
    fn reset_drops_a_partial_frame() {
        let mut f = Framer::new(Terminator::Cr, 16);
        let mut out = vec![];
        f.push(b"]E0400", &mut out);
        assert_eq!(f.pending(), 6);
        assert_eq!(f.reset(), 6);
        f.push(b"]E496385074\r", &mut out);
        assert_eq!(
            out,
            vec![Frame {
                bytes: b"]E496385074".to_vec(),
                truncated: false,
                incomplete: false,
            }]
        );
    }

    proptest! {
        #[test]
        fn splitting_never_changes_the_frames(
            data in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(3u8), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..20),
            byte_mode in any::<bool>(),
            max in 1usize..40,
        ) {
            let t = if byte_mode { Terminator::Byte(3) } else { Terminator::Cr };
            let whole = frames(t, max, &[&data]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = vec![];
            let mut prev = 0;
            for c in cuts { chunks.push(&data[prev..c]); prev = c; }
            chunks.push(&data[prev..]);
            prop_assert_eq!(&frames(t, max, &chunks), &whole);
            for (text, _) in &whole {
                prop_assert!(!text.is_empty());
            }
            let mut f = Framer::new(t, max);
            let mut out = vec![];
            f.push(&data, &mut out);
            for fr in out {
                prop_assert!(!fr.bytes.is_empty() && fr.bytes.len() <= max);
                prop_assert!(fr.bytes.iter().all(|&b| !f.ends_frame(b)));
            }
            prop_assert!(f.pending() <= max);
        }
    }
}
