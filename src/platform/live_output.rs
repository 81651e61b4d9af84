//! A running command's output as it goes live: the reads of its pipes (a
//! [`process::OutputTap`](crate::platform::process::OutputTap)) coalesced into few, small,
//! redacted chunks.
//!
//! - **Rate**: each pipe yields at most one chunk per [`TICK`] (with both pipes, at most 10 chunks
//!   a second per run), plus one last chunk per pipe when the command ends.
//! - **Size**: a chunk carries at most [`CHUNK_BYTES_MAX`] bytes of text, the latest; what it
//!   leaves out is counted in its `dropped_bytes`. Memory per pipe stays near
//!   [`PENDING_BYTES_MAX`], however much the command prints.
//! - **Lines**: a chunk ends at a line's end, unless a line grows past the chunk size or waits
//!   longer than [`PARTIAL_LINE_WAIT`] for its end.
//! - **Redaction**: text is redacted before it is cut, never after: a secret printed across two
//!   reads is whole when redacted. Where a cut is not a line's end, the last
//!   [`Redactor::longest_form_bytes`] bytes stay back for the next chunk, so no chunk ends in the
//!   first bytes of a secret whose rest is not printed yet; where bytes were missed (a full tap),
//!   the bytes before the gap lose that many bytes too, for the same reason. (A secret value
//!   holding a line break is only caught within one chunk.)

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::live::OutputStream;
use crate::platform::process::TapChunk;
use crate::platform::redact::Redactor;

/// How often chunks are cut: each pipe yields at most one per tick.
pub(crate) const TICK: Duration = Duration::from_millis(200);
/// Text bytes of one chunk at most.
pub(crate) const CHUNK_BYTES_MAX: usize = 4096;
/// Bytes one pipe's pending output keeps at most (beyond the held-back bytes): the oldest go
/// first, counted.
pub(crate) const PENDING_BYTES_MAX: usize = 2 * CHUNK_BYTES_MAX;
/// How long a line without its end (a prompt, a progress bar) waits before it goes out as is.
pub(crate) const PARTIAL_LINE_WAIT: Duration = Duration::from_secs(1);
/// Reads of the pipes the tap holds while the coalescer is busy: with 8 KiB reads, 256 KiB.
pub(crate) const TAP_CAPACITY: usize = 32;

/// One chunk of live output, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveChunk {
    /// The pipe.
    pub stream: OutputStream,
    /// Redacted text, at most [`CHUNK_BYTES_MAX`] bytes.
    pub text: String,
    /// Bytes printed since the previous chunk that this one does not carry.
    pub dropped_bytes: u64,
}

/// What one pipe printed and was not sent yet.
#[derive(Debug, Default)]
struct Pending {
    /// Raw bytes, or text already redacted followed by raw bytes (redacting again is harmless).
    bytes: Vec<u8>,
    /// Bytes left out since the last chunk.
    dropped_bytes: u64,
    /// When the oldest pending byte arrived.
    since: Option<Instant>,
}

/// Turns a command's reads into [`LiveChunk`]s: see the module's rules.
pub(crate) struct Coalescer<'a> {
    redactor: &'a Redactor,
    /// Bytes kept back from a cut that is not a line's end.
    hold: usize,
    stdout: Pending,
    stderr: Pending,
}

impl<'a> Coalescer<'a> {
    /// A coalescer redacting with `redactor`.
    pub(crate) fn new(redactor: &'a Redactor) -> Self {
        Self {
            redactor,
            hold: redactor.longest_form_bytes(),
            stdout: Pending::default(),
            stderr: Pending::default(),
        }
    }

    fn pending(&mut self, stream: OutputStream) -> (&Redactor, usize, &mut Pending) {
        let pending = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        (self.redactor, self.hold, pending)
    }

    /// Takes one read of a pipe.
    pub(crate) fn push(&mut self, chunk: TapChunk, now: Instant) {
        let (redactor, hold, pending) = self.pending(chunk.stream);
        if chunk.missed_bytes > 0 {
            // What came before the gap may end in a secret's first bytes; its rest was missed.
            let mut text = redact(redactor, &pending.bytes);
            let cut = floor_boundary(&text, text.len().saturating_sub(hold));
            pending.dropped_bytes += chunk.missed_bytes + (text.len() - cut) as u64;
            text.truncate(cut);
            pending.bytes = text.into_bytes();
        }
        if pending.bytes.is_empty() {
            pending.since = Some(now);
        }
        pending.bytes.extend_from_slice(&chunk.bytes);
        if pending.bytes.len() > PENDING_BYTES_MAX + hold {
            // The oldest go, down to a chunk's worth (so the next trim is a chunk of reads
            // away: each byte is redacted here at most twice). Redacted first: a cut through a
            // secret would leave its rest.
            let (complete, incomplete) = split_incomplete(&pending.bytes);
            let text = redactor.redact(&String::from_utf8_lossy(complete));
            let keep = CHUNK_BYTES_MAX + hold;
            let cut = ceil_boundary(&text, text.len().saturating_sub(keep));
            pending.dropped_bytes += cut as u64;
            let mut kept = text.as_bytes()[cut..].to_vec();
            kept.extend_from_slice(incomplete);
            pending.bytes = kept;
        }
    }

    /// The chunks due now: at most one per pipe. With `last`, everything pending goes (the
    /// command has ended).
    pub(crate) fn take(&mut self, now: Instant, last: bool) -> Vec<LiveChunk> {
        [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .filter_map(|stream| self.take_one(stream, now, last))
            .collect()
    }

    /// Forgets everything pending (nobody listens).
    pub(crate) fn clear(&mut self) {
        self.stdout = Pending::default();
        self.stderr = Pending::default();
    }

    fn take_one(&mut self, stream: OutputStream, now: Instant, last: bool) -> Option<LiveChunk> {
        let (redactor, hold, pending) = self.pending(stream);
        let mut text = if last {
            redact(redactor, &std::mem::take(&mut pending.bytes))
        } else if let Some(end) = pending
            .bytes
            .iter()
            .rposition(|b| *b == b'\n' || *b == b'\r')
        {
            let rest = pending.bytes.split_off(end + 1);
            let lines = std::mem::replace(&mut pending.bytes, rest);
            redact(redactor, &lines)
        } else {
            let waited = pending
                .since
                .is_some_and(|since| now.duration_since(since) >= PARTIAL_LINE_WAIT);
            if pending.bytes.len() <= hold || (pending.bytes.len() < CHUNK_BYTES_MAX && !waited) {
                return None;
            }
            // A line without its end: out, but for the bytes that may start a secret.
            let (complete, incomplete) = split_incomplete(&pending.bytes);
            let incomplete = incomplete.to_vec();
            let text = redactor.redact(&String::from_utf8_lossy(complete));
            let cut = floor_boundary(&text, text.len().saturating_sub(hold));
            let mut rest = text.as_bytes()[cut..].to_vec();
            rest.extend_from_slice(&incomplete);
            pending.bytes = rest;
            let mut text = text;
            text.truncate(cut);
            text
        };
        pending.since = (!pending.bytes.is_empty()).then_some(now);
        if text.len() > CHUNK_BYTES_MAX {
            // The latest lines matter most: the front goes, from a line's start when one is near.
            let mut cut = ceil_boundary(&text, text.len() - CHUNK_BYTES_MAX);
            if let Some(newline) = text[cut..].find('\n') {
                if newline < CHUNK_BYTES_MAX / 2 {
                    cut += newline + 1;
                }
            }
            pending.dropped_bytes += cut as u64;
            text.drain(..cut);
        }
        if text.is_empty() && (pending.dropped_bytes == 0 || !last) {
            return None;
        }
        Some(LiveChunk {
            stream,
            text,
            dropped_bytes: std::mem::take(&mut pending.dropped_bytes),
        })
    }
}

/// Feeds a coalescer from a tap until the command's pipes close, handing each chunk due to
/// `emit`. While `listening` says nobody listens, output is skipped without being redacted.
pub(crate) async fn forward(
    mut taps: mpsc::Receiver<TapChunk>,
    redactor: &Redactor,
    listening: impl Fn() -> bool,
    mut emit: impl FnMut(LiveChunk),
) {
    let mut coalescer = Coalescer::new(redactor);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = taps.recv() => match received {
                Some(chunk) if listening() => coalescer.push(chunk, Instant::now()),
                // Dropped whole, not kept: what comes after a gap must not join what came before.
                Some(_) => coalescer.clear(),
                None => break,
            },
            _ = tick.tick() => {
                if listening() {
                    coalescer.take(Instant::now(), false).into_iter().for_each(&mut emit);
                } else {
                    coalescer.clear();
                }
            }
        }
    }
    if listening() {
        coalescer
            .take(Instant::now(), true)
            .into_iter()
            .for_each(&mut emit);
    }
}

/// The redacted text of `bytes` (invalid UTF-8 replaced).
fn redact(redactor: &Redactor, bytes: &[u8]) -> String {
    redactor.redact(&String::from_utf8_lossy(bytes))
}

/// `bytes` split before a UTF-8 sequence that the last bytes only begin (its rest not read yet).
fn split_incomplete(bytes: &[u8]) -> (&[u8], &[u8]) {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: the lead is further back
        }
        let needed = match byte {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        if needed > back {
            return bytes.split_at(len - back);
        }
        break;
    }
    (bytes, &[])
}

/// The greatest char boundary of `text` at or before `at`.
fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The least char boundary of `text` at or after `at`.
fn ceil_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-7f3a9c-very-secret";

    fn read(stream: OutputStream, text: &str) -> TapChunk {
        TapChunk {
            stream,
            bytes: text.as_bytes().to_vec(),
            missed_bytes: 0,
        }
    }

    fn out(text: &str) -> TapChunk {
        read(OutputStream::Stdout, text)
    }

    fn texts(chunks: &[LiveChunk]) -> String {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn whole_lines_go_out_and_a_partial_line_waits_for_its_end() {
        let redactor = Redactor::default();
        let mut coalescer = Coalescer::new(&redactor);
        let now = Instant::now();
        coalescer.push(out("one\ntw"), now);
        coalescer.push(read(OutputStream::Stderr, "warn\n"), now);
        let chunks = coalescer.take(now, false);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].text, "one\n");
        assert_eq!(chunks[0].stream, OutputStream::Stdout);
        assert_eq!(chunks[1].text, "warn\n");
        assert_eq!(chunks[1].stream, OutputStream::Stderr);
        assert!(
            coalescer.take(now, false).is_empty(),
            "`tw` waits for its line's end"
        );
        coalescer.push(out("o\n"), now);
        assert_eq!(texts(&coalescer.take(now, false)), "two\n");
        // A line that does not end goes out after a while, and at the end in any case.
        coalescer.push(out("progress 50%"), now);
        assert!(coalescer.take(now, false).is_empty());
        let later = now + PARTIAL_LINE_WAIT;
        assert_eq!(texts(&coalescer.take(later, false)), "progress 50%");
        coalescer.push(out("tail"), later);
        assert_eq!(texts(&coalescer.take(later, true)), "tail");
    }

    /// A secret printed across reads, and across the cut of a line too long to wait for, never
    /// appears in a chunk, not even its first bytes.
    #[test]
    fn a_secret_split_across_reads_and_cuts_is_redacted() {
        let redactor = Redactor::new([("key".to_owned(), SECRET.to_owned())]);
        let mut coalescer = Coalescer::new(&redactor);
        let now = Instant::now();
        let (front, back) = SECRET.split_at(7);
        coalescer.push(out(&format!("the key is {front}")), now);
        let late = now + PARTIAL_LINE_WAIT;
        let early = texts(&coalescer.take(late, false));
        assert!(!early.contains(front), "{early}");
        coalescer.push(out(&format!("{back} ok\n")), late);
        let rest = texts(&coalescer.take(late, false));
        let all = format!("{early}{rest}");
        assert_eq!(all, "the key is [REDACTED:key] ok\n");

        // A line longer than a chunk, secrets everywhere, read in odd pieces.
        let line = format!("{SECRET}x").repeat(1000);
        let mut sent = String::new();
        for piece in line.as_bytes().chunks(777) {
            coalescer.push(
                TapChunk {
                    stream: OutputStream::Stdout,
                    bytes: piece.to_vec(),
                    missed_bytes: 0,
                },
                now,
            );
            sent.push_str(&texts(&coalescer.take(now, false)));
        }
        sent.push_str(&texts(&coalescer.take(now, true)));
        assert!(!sent.contains(front), "a secret's start leaked");
        assert!(
            !sent.contains(&SECRET[SECRET.len() - 7..]),
            "a secret's end leaked"
        );
        assert!(sent.contains("[REDACTED:key]x"));
    }

    /// Bytes the tap missed: the text before the gap loses its possibly secret end, and the
    /// next chunk says how much was left out.
    #[test]
    fn a_gap_drops_the_end_before_it_and_is_counted() {
        let redactor = Redactor::new([("key".to_owned(), SECRET.to_owned())]);
        let mut coalescer = Coalescer::new(&redactor);
        let now = Instant::now();
        coalescer.push(out(&format!("start {}", &SECRET[..10])), now);
        coalescer.push(
            TapChunk {
                stream: OutputStream::Stdout,
                bytes: b"after\n".to_vec(),
                missed_bytes: 500,
            },
            now,
        );
        let chunks = coalescer.take(now, true);
        assert_eq!(chunks.len(), 1);
        assert!(!chunks[0].text.contains(&SECRET[..10]), "{:?}", chunks[0]);
        assert!(chunks[0].text.ends_with("after\n"));
        assert!(chunks[0].dropped_bytes >= 500);
    }

    /// However much is printed between ticks, a chunk is at most `CHUNK_BYTES_MAX`, holds the
    /// latest lines, counts the rest, and the pending bytes stay bounded.
    #[test]
    fn a_flood_is_bounded_and_counted() {
        let redactor = Redactor::new([("key".to_owned(), SECRET.to_owned())]);
        let mut coalescer = Coalescer::new(&redactor);
        let now = Instant::now();
        let mut printed = 0u64;
        for i in 0..100_000 {
            let line = format!("line {i}\n");
            printed += line.len() as u64;
            coalescer.push(out(&line), now);
            assert!(coalescer.stdout.bytes.len() <= PENDING_BYTES_MAX + coalescer.hold);
        }
        let chunks = coalescer.take(now, false);
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        assert!(chunk.text.len() <= CHUNK_BYTES_MAX);
        assert!(chunk.text.ends_with("line 99999\n"));
        assert!(chunk.text.starts_with("line "), "cut at a line's start");
        assert_eq!(chunk.dropped_bytes + chunk.text.len() as u64, printed);
        assert!(coalescer.take(now, true).is_empty());
    }

    #[test]
    fn an_unfinished_utf8_sequence_waits_for_its_rest() {
        let redactor = Redactor::default();
        let mut coalescer = Coalescer::new(&redactor);
        let now = Instant::now();
        let e = "é".as_bytes();
        coalescer.push(
            TapChunk {
                stream: OutputStream::Stdout,
                bytes: [b"caf".as_slice(), &e[..1]].concat(),
                missed_bytes: 0,
            },
            now,
        );
        let late = now + PARTIAL_LINE_WAIT;
        assert_eq!(texts(&coalescer.take(late, false)), "caf");
        coalescer.push(
            TapChunk {
                stream: OutputStream::Stdout,
                bytes: [&e[1..], b"\n".as_slice()].concat(),
                missed_bytes: 0,
            },
            late,
        );
        assert_eq!(texts(&coalescer.take(late, false)), "é\n");
    }

    /// The forwarder cuts at most one chunk per pipe per tick, and ends with the tap.
    #[tokio::test]
    async fn the_forwarder_is_rate_limited() {
        let redactor = Redactor::default();
        let (sender, receiver) = mpsc::channel(TAP_CAPACITY);
        let producer = tokio::spawn(async move {
            for i in 0..500 {
                let bytes = format!("line {i}\n").into_bytes();
                let chunk = TapChunk {
                    stream: OutputStream::Stdout,
                    bytes,
                    missed_bytes: 0,
                };
                if sender.send(chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let started = Instant::now();
        let mut chunks = Vec::new();
        forward(receiver, &redactor, || true, |chunk| chunks.push(chunk)).await;
        producer.await.unwrap();
        let elapsed = started.elapsed();
        let ticks = elapsed.as_millis() / TICK.as_millis() + 1;
        assert!(
            chunks.len() as u128 <= ticks + 1,
            "{} chunks in {elapsed:?}",
            chunks.len()
        );
        assert!(chunks.len() >= 5, "{}", chunks.len());
        let all = texts(&chunks);
        assert!(all.starts_with("line 0\n") && all.ends_with("line 499\n"));
    }
}
