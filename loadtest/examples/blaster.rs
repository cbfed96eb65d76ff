//! A stand-in for a very fast broker, to measure how many messages
//! ringmq-bench can receive: it accepts MQTT 3.1.1 and 5.0 connections,
//! grants every CONNECT and SUBSCRIBE, and then writes QoS 0 PUBLISH
//! packets carrying ringmq-bench payload headers to each subscriber as fast
//! as its socket takes them (or at `--rate` per connection). It is not a
//! broker: it routes nothing and ignores every packet after SUBSCRIBE.
//!
//! ```sh
//! cargo build --release -p ringmq-bench --example blaster
//! taskset -c 0 target/release/examples/blaster --listen 127.0.0.1:18850 &
//! taskset -c 1 target/release/ringmq-bench sub --host 127.0.0.1:18850 \
//!     --cores 1 --clients 4 --keepalive 0 --duration 10s
//! ```
//!
//! Each connection is one blocking thread. The packets of a batch are
//! built once; each batch only rewrites the 16-byte payload headers
//! (intended send time = the time the batch is written, CLOCK_MONOTONIC,
//! and publisher id = connection number, sequence number from 0).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Messages per write.
const BATCH: usize = 1024;

/// Command-line settings.
#[derive(Debug)]
struct Options {
    listen: String,
    payload: usize,
    topic: String,
    rate: Option<f64>,
}

fn main() -> io::Result<()> {
    let options = parse_options();
    let listener = TcpListener::bind(&options.listen)?;
    eprintln!("blaster: listening on {}", listener.local_addr()?);
    let options = std::sync::Arc::new(options);
    for (index, stream) in listener.incoming().enumerate() {
        let stream = stream?;
        let options = options.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, index as u32, &options) {
                eprintln!("blaster: connection {index}: {e}");
            }
        });
    }
    Ok(())
}

fn parse_options() -> Options {
    let mut options = Options {
        listen: "127.0.0.1:18850".into(),
        payload: 16,
        topic: "ringmq-bench/0".into(),
        rate: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => options.listen = value,
            "--payload" => options.payload = value.parse().unwrap_or_else(|_| usage(&value)),
            "--topic" => options.topic = value,
            "--rate" => options.rate = Some(value.parse().unwrap_or_else(|_| usage(&value))),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if options.payload < 16 {
        usage("--payload must be at least 16 bytes");
    }
    options
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "blaster: {problem}\nusage: blaster [--listen ADDR] [--payload BYTES] [--topic TOPIC] \
         [--rate MSGS_PER_S_PER_CONNECTION]"
    );
    std::process::exit(2)
}

/// Reads one whole packet: (first byte, body).
fn read_packet(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    let first = byte[0];
    let (mut length, mut shift) = (0usize, 0);
    loop {
        stream.read_exact(&mut byte)?;
        length |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad remaining length"));
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok((first, body))
}

/// Appends an MQTT variable byte integer.
fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn serve(mut stream: TcpStream, publisher: u32, options: &Options) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (first, connect) = read_packet(&mut stream)?;
    if first >> 4 != 1 || connect.len() < 7 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "first packet is not CONNECT"));
    }
    // Protocol level follows the protocol name "MQTT" (2 + 4 bytes).
    let v5 = connect[6] == 5;
    // CONNACK: accepted, no session; 5.0 adds an empty property list.
    stream.write_all(if v5 { &[0x20, 3, 0, 0, 0] } else { &[0x20, 2, 0, 0] })?;
    loop {
        let (first, body) = read_packet(&mut stream)?;
        if first >> 4 == 8 && body.len() >= 2 {
            // SUBACK granting QoS 0 to one filter.
            let (hi, lo) = (body[0], body[1]);
            let suback: &[u8] = if v5 { &[0x90, 4, hi, lo, 0, 0] } else { &[0x90, 3, hi, lo, 0] };
            stream.write_all(suback)?;
            break;
        }
    }
    blast(stream, publisher, options, v5)
}

fn blast(mut stream: TcpStream, publisher: u32, options: &Options, v5: bool) -> io::Result<()> {
    // One PUBLISH, QoS 0: topic, (5.0: empty properties), payload.
    let mut packet = Vec::new();
    let remaining = 2 + options.topic.len() + usize::from(v5) + options.payload;
    packet.push(0x30);
    put_varint(&mut packet, remaining);
    packet.extend_from_slice(&(options.topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(options.topic.as_bytes());
    if v5 {
        packet.push(0);
    }
    let header_at = packet.len();
    packet.resize(packet.len() + options.payload, 0);
    let mut batch = packet.repeat(BATCH);
    let interval = options.rate.map(|rate| Duration::from_secs_f64(BATCH as f64 / rate));
    let start = Instant::now();
    let mut seq = 0u64;
    for round in 1u32.. {
        let now_ns = monotonic_ns();
        for (i, message) in batch.chunks_exact_mut(packet.len()).enumerate() {
            let header = &mut message[header_at..header_at + 16];
            header[..8].copy_from_slice(&now_ns.to_be_bytes());
            let word = (u64::from(publisher) << 40) | (seq + i as u64);
            header[8..].copy_from_slice(&word.to_be_bytes());
        }
        seq += BATCH as u64;
        match stream.write_all(&batch) {
            Ok(()) => {}
            // The subscriber went away: done.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        if let Some(interval) = interval {
            let due = start + interval * round;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(())
}
