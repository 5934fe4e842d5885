//! The access log's writer: a thread of its own that writes batches of lines
//! to a file descriptor, never touching the interpreter.
//!
//! The event loop renders lines into a buffer and hands each batch over
//! ([`LogWriter::submit`]: a copy and a channel send); the thread writes it
//! whole (`write(2)` until done, `EINTR` retried) and counts its lines as
//! written, failed writes included (a closed stdout must not hold memory), so
//! the loop can bound what is still pending ([`LogWriter::written`]). A thread
//! that needed the interpreter's lock after every `write(2)` would wake on
//! every release of that lock by the loop: this one never asks for it.
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// One batch: its bytes and how many lines they hold.
type Batch = (Vec<u8>, u64);

/// A writer thread on one file descriptor (which stays the caller's to close).
pub struct LogWriter {
    tx: Mutex<Option<Sender<Batch>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    finished: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<AtomicU64>,
    submitted: AtomicU64,
}

impl LogWriter {
    /// Start the thread writing to `fd`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn new(fd: i32) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Batch>();
        let written = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&written);
        let finished = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&finished);
        let thread = std::thread::Builder::new()
            .name("fastgw-access-log".into())
            .spawn(move || {
                // SAFETY: the descriptor outlives the thread (the owner closes it only
                // once `close` has seen the thread stop), and ManuallyDrop never
                // closes it here.
                let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
                while let Ok((data, lines)) = rx.recv() {
                    write_whole(&mut *out, &data);
                    count.fetch_add(lines, Ordering::Release);
                }
                let (done, cond) = &*signal;
                *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
                cond.notify_all();
            })?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            finished,
            written,
            submitted: AtomicU64::new(0),
        })
    }

    /// Queue `data` (`lines` lines) for the thread; false once closed.
    pub fn submit(&self, data: &[u8], lines: u64) -> bool {
        self.submit_vec(data.to_vec(), lines)
    }

    /// [`submit`](Self::submit) of a buffer handed over whole (no copy).
    pub fn submit_vec(&self, data: Vec<u8>, lines: u64) -> bool {
        let guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        if tx.send((data, lines)).is_err() {
            return false;
        }
        self.submitted.fetch_add(lines, Ordering::Relaxed);
        true
    }

    /// Lines written (or dropped by a failed write) so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Lines submitted and not yet written.
    pub fn pending(&self) -> u64 {
        self.submitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.written())
    }

    /// Write what is queued, then stop the thread, waiting for it up to `timeout`:
    /// true when it has stopped. A thread still blocked in a write after that
    /// (a pipe nobody reads) is left behind, its descriptor still in use: the
    /// caller must not close it then. Idempotent.
    pub fn close(&self, timeout: Duration) -> bool {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let (done, cond) = &*self.finished;
        let guard = done.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = cond
            .wait_timeout_while(guard, timeout, |finished| !*finished)
            .unwrap_or_else(PoisonError::into_inner);
        if !*guard {
            return false;
        }
        drop(guard);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        true
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // The thread ends on its own once what is queued is written.
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// `data` written whole to `out`; a failure drops the rest (never retried but
/// for `EINTR`).
fn write_whole(out: &mut impl Write, data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        match out.write(rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn pipe() -> (File, File) {
        let mut fds = [0i32; 2];
        // SAFETY: a two-int array for pipe(2), whose descriptors become Files.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn writes_batches_in_order_and_counts_their_lines() {
        let (mut r, w) = pipe();
        let writer = LogWriter::new(w.as_raw_fd()).unwrap();
        assert!(writer.submit(b"a\nb\n", 2));
        assert!(writer.submit(b"c\n", 1));
        assert!(writer.close(Duration::from_secs(10)));
        assert_eq!(writer.written(), 3);
        assert_eq!(writer.pending(), 0);
        assert!(!writer.submit(b"d\n", 1), "closed: nothing more is taken");
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "a\nb\nc\n");
    }

    #[test]
    fn a_failed_write_still_counts_its_lines() {
        let (r, w) = pipe();
        drop(r); // EPIPE on write (SIGPIPE is ignored by Rust's runtime)
        let writer = LogWriter::new(w.as_raw_fd()).unwrap();
        assert!(writer.submit(b"lost\n", 1));
        assert!(writer.close(Duration::from_secs(10)));
        assert_eq!(writer.written(), 1);
    }

    #[test]
    fn a_writer_blocked_in_a_write_is_left_behind_after_the_timeout() {
        let (r, w) = pipe();
        let writer = LogWriter::new(w.as_raw_fd()).unwrap();
        assert!(writer.submit(&vec![b'x'; 1 << 20], 1)); // more than the pipe holds
        assert!(!writer.close(Duration::from_millis(50)), "still blocked");
        drop(r); // the write fails now (EPIPE): the thread ends
        assert!(writer.close(Duration::from_secs(10)));
        assert_eq!(writer.written(), 1);
        drop(w);
    }

    #[test]
    fn a_large_batch_is_written_whole() {
        let (mut r, w) = pipe();
        let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        let writer = LogWriter::new(w.as_raw_fd()).unwrap();
        assert!(writer.submit(&data, 1));
        assert!(writer.close(Duration::from_secs(10)));
        drop(w);
        assert_eq!(reader.join().unwrap(), data);
    }
}
