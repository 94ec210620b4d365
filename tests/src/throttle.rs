//! A TCP proxy that passes one direction at a limited rate: a store's slow
//! uplink (LTE backup, a saturated DSL line) in front of the cloud broker.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Forwards `127.0.0.1:port()` to `127.0.0.1:upstream`; bytes from the
/// client go up at most `bytes_per_sec`, the answers come back at once.
pub struct Throttle {
    port: u16,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Throttle {
    pub fn start(upstream: u16, bytes_per_sec: u64) -> Result<Throttle> {
        // A small receive buffer, as a slow link's window keeps the bytes in
        // flight small: the sender's writes then wait on the link, as they
        // do on a real one, instead of vanishing into loopback's megabytes
        // of buffer. Set before listening, so accepted sockets have it.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(16 * 1024)?;
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        socket.listen(16)?;
        let listener: TcpListener = socket.into();
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (connections, stop) = (connections.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                            let _ = relay(client, upstream, bytes_per_sec, stop.clone());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Throttle {
            port,
            connections,
            stop,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn relay(
    client: TcpStream,
    upstream: u16,
    bytes_per_sec: u64,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        // Wakes the copy loops now and then to notice `stop`.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
    }
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let stop2 = stop.clone();
    std::thread::spawn(move || copy(c2, s2, Some(bytes_per_sec), &stop2));
    std::thread::spawn(move || copy(server, client, None, &stop));
    Ok(())
}

/// Copies until either side closes; at most `rate` bytes per second.
fn copy(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>, stop: &AtomicBool) {
    let started = Instant::now();
    let mut passed = 0u64;
    // Small chunks, so the rate holds within a fraction of a second.
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if let Some(rate) = rate {
            passed += n as u64;
            let due = Duration::from_secs_f64(passed as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
