//! MQTT over WebSocket (MQTT 3.1.1 and 5.0, section 6), sans IO: the
//! framing of RFC 6455 between a byte stream from the client and the MQTT
//! byte stream the decoder reads, and back.
//!
//! [`WsCodec`] is the whole state of one connection's framing (a partial
//! frame header, the mask and its position, a partial control frame, the
//! frames waiting to be sent). It is plain data, so it travels with the
//! socket when a connection moves to its home shard.
//!
//! Frame headers are parsed and written by `tungstenite`'s
//! [`FrameHeader`] over bytes; payloads are unmasked in place in the
//! caller's read buffer, so input costs no copy beyond moving the payload
//! over the headers it follows, and no allocation.

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// The header of a frame the server sends (unmasked) is at most 10 bytes.
const MAX_SERVER_HEADER: usize = 10;
/// The longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;
/// The output held beyond which a new batch waits for the socket.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Close status codes (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint cannot accept (a text frame, here).
    pub const UNSUPPORTED_DATA: u16 = 1003;
}

/// Why the client's frames are refused; the close frame carrying
/// [`WsError::code`] is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A text frame: "MQTT Control Packets MUST be sent in WebSocket
    /// binary data frames. If any other type of data frame is received the
    /// recipient MUST close the Network Connection" [MQTT-6.0.0-1].
    #[error("a text frame (MQTT is sent in binary frames)")]
    TextFrame,
    /// A frame without a mask: "The server MUST close the connection upon
    /// receiving a frame that is not masked" (RFC 6455 section 5.1).
    #[error("an unmasked frame from the client")]
    Unmasked,
    /// Reserved bits or opcodes, a fragmented or oversized control frame,
    /// a continuation out of place.
    #[error("a malformed WebSocket frame")]
    Protocol,
}

impl WsError {
    /// The close status code that tells the client.
    pub fn code(self) -> u16 {
        match self {
            Self::TextFrame => close_code::UNSUPPORTED_DATA,
            Self::Unmasked | Self::Protocol => close_code::PROTOCOL_ERROR,
        }
    }
}

/// What the payload bytes of the frame being read are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// Between frames: a header comes next.
    None,
    /// MQTT bytes (a binary or continuation frame).
    Data,
    /// A control frame, gathered before it is handled.
    Control(Control),
}

/// The framing state of one WebSocket connection.
#[derive(Clone, Debug)]
pub struct WsCodec {
    /// A frame header received in part.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The frame being read: its kind, the payload bytes still to come,
    /// its mask and the position in the mask.
    payload: Payload,
    payload_left: u64,
    mask: [u8; 4],
    mask_pos: usize,
    /// A control frame's payload received so far.
    control: [u8; MAX_CONTROL],
    control_len: u8,
    /// Inside a fragmented message (a data frame without FIN was read).
    fragmented: bool,
    /// The client sent its close frame, or a frame that was refused:
    /// nothing more is read.
    close_received: bool,
    /// Why the client's frames were refused, if they were.
    error: Option<WsError>,
    /// Our close frame is queued: nothing more is sent after it.
    close_sent: bool,
    /// Frames to send from `sent` on; an open batch starts at `batch` with
    /// [`MAX_SERVER_HEADER`] bytes reserved for its header.
    out: Vec<u8>,
    sent: usize,
    batch: Option<usize>,
    /// Bytes the client sent right after its upgrade request, to be read
    /// before the socket.
    early: Vec<u8>,
}

impl WsCodec {
    /// The framing of a connection just upgraded; `early` is what the
    /// client sent after its request (frames already).
    pub fn new(early: Vec<u8>) -> Self {
        Self {
            header: [0; MAX_HEADER],
            header_len: 0,
            payload: Payload::None,
            payload_left: 0,
            mask: [0; 4],
            mask_pos: 0,
            control: [0; MAX_CONTROL],
            control_len: 0,
            fragmented: false,
            close_received: false,
            error: None,
            close_sent: false,
            out: Vec::new(),
            sent: 0,
            batch: None,
            early,
        }
    }

    /// Moves the bytes the client sent with its upgrade request into `buf`
    /// (0 when there are none left).
    pub fn take_early(&mut self, buf: &mut [u8]) -> usize {
        let n = self.early.len().min(buf.len());
        buf[..n].copy_from_slice(&self.early[..n]);
        self.early.drain(..n);
        if self.early.is_empty() {
            self.early = Vec::new();
        }
        n
    }

    /// Whether the stream from the client has ended: its close frame was
    /// read, or a frame was refused ([`Self::error`]).
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// Why the client's frames were refused, once they were.
    pub fn error(&self) -> Option<WsError> {
        self.error
    }

    /// Decodes the frames in `buf` (bytes as received) in place: the MQTT
    /// bytes they carry are moved to the front of `buf`, unmasked, and
    /// their count returned. Pings are answered and a close frame is
    /// answered (then the rest is ignored); see [`Self::output`].
    ///
    /// "A single WebSocket data frame can contain multiple or partial MQTT
    /// Control Packets. The receiver MUST NOT assume that MQTT Control
    /// Packets are aligned on WebSocket frame boundaries" [MQTT-6.0.0-2]:
    /// the result is a byte stream, frame boundaries are not kept.
    ///
    /// A refused frame is an error once the MQTT bytes before it were
    /// returned (the next call), however the input was cut into reads.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<usize, WsError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut read = 0;
        let mut written = 0;
        while read < buf.len() && !self.close_received {
            if self.payload == Payload::None {
                match self.read_header(&buf[read..]) {
                    Ok(used) => read += used,
                    Err(error) if written == 0 => return Err(error),
                    Err(_) => break,
                }
                continue;
            }
            let n = usize::try_from(self.payload_left).unwrap_or(usize::MAX).min(buf.len() - read);
            match self.payload {
                Payload::Data => {
                    buf.copy_within(read..read + n, written);
                    self.unmask(&mut buf[written..written + n]);
                    written += n;
                }
                _ => {
                    let at = usize::from(self.control_len);
                    self.control[at..at + n].copy_from_slice(&buf[read..read + n]);
                    let (mask, pos) = (self.mask, self.mask_pos);
                    unmask(&mut self.control[at..at + n], mask, pos);
                    self.mask_pos = (self.mask_pos + n) % 4;
                    // n <= MAX_CONTROL - at: the frame's length was checked.
                    self.control_len += n as u8;
                }
            }
            read += n;
            self.payload_left -= n as u64;
            if self.payload_left == 0 {
                self.end_frame();
            }
        }
        Ok(written)
    }

    /// Reads (part of) a frame header from `input`; returns the bytes used.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, WsError> {
        let had = usize::from(self.header_len);
        let take = (MAX_HEADER - had).min(input.len());
        self.header[had..had + take].copy_from_slice(&input[..take]);
        let mut cursor = std::io::Cursor::new(&self.header[..had + take]);
        let parsed = FrameHeader::parse(&mut cursor);
        let end = cursor.position() as usize;
        let Some((header, len)) = parsed.map_err(|_| self.fail(WsError::Protocol))? else {
            // A header is at most MAX_HEADER bytes: all of input was taken.
            self.header_len = (had + take) as u8;
            return Ok(take);
        };
        let used = end - had;
        self.header_len = 0;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            // No extension was negotiated (RFC 6455 section 5.2).
            return Err(self.fail(WsError::Protocol));
        }
        let Some(mask) = header.mask else { return Err(self.fail(WsError::Unmasked)) };
        self.payload = match header.opcode {
            OpCode::Data(Data::Text) => return Err(self.fail(WsError::TextFrame)),
            OpCode::Data(Data::Binary) if !self.fragmented => Payload::Data,
            OpCode::Data(Data::Continue) if self.fragmented => Payload::Data,
            OpCode::Control(control) if header.is_final && len <= MAX_CONTROL as u64 => {
                Payload::Control(control)
            }
            _ => return Err(self.fail(WsError::Protocol)),
        };
        if self.payload == Payload::Data {
            self.fragmented = !header.is_final;
        }
        self.mask = mask;
        self.mask_pos = 0;
        self.payload_left = len;
        self.control_len = 0;
        if len == 0 {
            self.end_frame();
        }
        Ok(used)
    }

    /// Unmasks MQTT bytes of the current frame, in place.
    fn unmask(&mut self, bytes: &mut [u8]) {
        unmask(bytes, self.mask, self.mask_pos);
        self.mask_pos = (self.mask_pos + bytes.len()) % 4;
    }

    /// A frame was read whole: a control frame is handled.
    fn end_frame(&mut self) {
        if let Payload::Control(control) = self.payload {
            let len = usize::from(self.control_len);
            match control {
                Control::Ping => {
                    // "Upon receipt of a Ping frame, an endpoint MUST send
                    // a Pong frame in response [...] with identical
                    // Application data" (RFC 6455 section 5.5.2).
                    let payload = self.control;
                    self.queue_control(Control::Pong, &payload[..len]);
                }
                Control::Close => {
                    self.close_received = true;
                    // Answered with the status code received, if any
                    // (RFC 6455 section 5.5.1).
                    let code = if len >= 2 {
                        u16::from_be_bytes([self.control[0], self.control[1]])
                    } else {
                        close_code::NORMAL
                    };
                    self.queue_close(code);
                }
                Control::Pong | Control::Reserved(_) => {}
            }
        }
        self.payload = Payload::None;
    }

    /// Queues the close frame with `code` (once) and returns `error`.
    fn fail(&mut self, error: WsError) -> WsError {
        self.queue_close(error.code());
        self.close_received = true;
        self.error = Some(error);
        error
    }

    /// Queues our close frame with `code`, unless one was queued already.
    pub fn queue_close(&mut self, code: u16) {
        if !self.close_sent {
            self.queue_control(Control::Close, &code.to_be_bytes());
            self.close_sent = true;
        }
    }

    fn queue_control(&mut self, control: Control, payload: &[u8]) {
        if self.close_sent {
            return;
        }
        self.seal();
        let header = FrameHeader { opcode: OpCode::Control(control), ..FrameHeader::default() };
        // Writing to a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.out);
        self.out.extend_from_slice(payload);
    }

    /// Whether a new batch should wait for the socket to take what is
    /// queued.
    pub fn output_full(&self) -> bool {
        self.batch.is_none() && self.out.len() - self.sent >= OUTPUT_HIGH_WATER
    }

    /// Adds MQTT bytes to the batch (opened if needed); they are sent in
    /// one binary frame when the batch is sealed. Nothing is taken after
    /// our close frame.
    pub fn write(&mut self, bytes: &[u8]) -> usize {
        if self.close_sent {
            return 0;
        }
        if self.batch.is_none() {
            self.batch = Some(self.out.len());
            self.out.extend_from_slice(&[0; MAX_SERVER_HEADER]);
        }
        self.out.extend_from_slice(bytes);
        bytes.len()
    }

    /// Ends the open batch: the header of its binary frame is written
    /// before it ("MQTT Control Packets MUST be sent in WebSocket binary
    /// data frames" [MQTT-6.0.0-1]).
    pub fn seal(&mut self) {
        let Some(start) = self.batch.take() else { return };
        let len = (self.out.len() - start - MAX_SERVER_HEADER) as u64;
        let header = FrameHeader { opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
        let header_len = header.len(len);
        let gap = MAX_SERVER_HEADER - header_len;
        let _ = header.format(len, &mut &mut self.out[start + gap..start + MAX_SERVER_HEADER]);
        // Close the gap before the header: move what precedes the batch
        // (usually nothing) rather than the batch.
        self.out.copy_within(self.sent..start, self.sent + gap);
        self.sent += gap;
    }

    /// The bytes to send now (sealed frames only).
    pub fn output(&self) -> &[u8] {
        let end = self.batch.unwrap_or(self.out.len());
        &self.out[self.sent..end]
    }

    /// `n` bytes of [`Self::output`] were sent.
    pub fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.out.len() && self.batch.is_none() {
            // Idle connections hold no output buffer (as the connection's
            // own write buffer).
            self.out = Vec::new();
            self.sent = 0;
        }
    }
}

/// XORs `bytes` with the mask, starting at position `pos` of the mask.
fn unmask(bytes: &mut [u8], mask: [u8; 4], pos: usize) {
    let key: [u8; 4] = std::array::from_fn(|i| mask[(pos + i) % 4]);
    let mut chunks = bytes.chunks_exact_mut(4);
    for chunk in &mut chunks {
        for (b, k) in chunk.iter_mut().zip(key) {
            *b ^= k;
        }
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked, FIN as given.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    /// Decodes `input` fed in chunks of `chunk` bytes.
    fn decode_chunked(codec: &mut WsCodec, input: &[u8], chunk: usize) -> Result<Vec<u8>, WsError> {
        let mut got = Vec::new();
        for piece in input.chunks(chunk) {
            let mut buf = piece.to_vec();
            let n = codec.decode(&mut buf)?;
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    }

    #[test]
    fn binary_frames_become_a_byte_stream_whatever_the_chunking() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let mut input = frame(0x2, false, &payload[..10]);
        input.extend(frame(0x9, true, b"ping"));
        input.extend(frame(0x0, false, &payload[10..300]));
        input.extend(frame(0x0, true, &payload[300..]));
        input.extend(frame(0x2, true, b""));
        for chunk in [1, 2, 3, 5, 13, 14, 1000, input.len()] {
            let mut codec = WsCodec::new(Vec::new());
            let got = decode_chunked(&mut codec, &input, chunk).unwrap();
            assert_eq!(got, payload, "chunk {chunk}");
            // The ping is answered with a pong carrying its payload.
            assert_eq!(codec.output(), [0x8a, 4, b'p', b'i', b'n', b'g'], "chunk {chunk}");
        }
    }

    #[test]
    fn refused_frames_queue_the_close_code() {
        let cases: [(Vec<u8>, WsError); 6] = [
            (frame(0x1, true, b"text"), WsError::TextFrame),
            (vec![0x82, 0x01, 0x00], WsError::Unmasked),
            (frame(0x0, true, b"x"), WsError::Protocol),
            (frame(0x9, false, b"x"), WsError::Protocol),
            (frame(0x9, true, &[0; 126]), WsError::Protocol),
            (frame(0x3, true, b"x"), WsError::Protocol),
        ];
        for (input, error) in cases {
            let mut codec = WsCodec::new(Vec::new());
            assert_eq!(decode_chunked(&mut codec, &input, 100), Err(error), "{input:?}");
            let code = error.code().to_be_bytes();
            assert_eq!(codec.output(), [0x88, 2, code[0], code[1]]);
            assert!(codec.close_received());
        }
        // The bytes before a refused frame come first, then the error.
        let mut codec = WsCodec::new(Vec::new());
        let mut input = frame(0x2, false, b"a");
        input.extend(frame(0x2, true, b"b"));
        let mut buf = input.clone();
        assert_eq!(codec.decode(&mut buf), Ok(1));
        assert_eq!(buf[0], b'a');
        assert_eq!(codec.error(), Some(WsError::Protocol));
        assert_eq!(codec.decode(&mut []), Err(WsError::Protocol));
    }

    #[test]
    fn a_close_frame_is_answered_and_ends_the_stream() {
        let mut codec = WsCodec::new(Vec::new());
        let mut input = frame(0x2, true, b"mqtt");
        input.extend(frame(0x8, true, &1001u16.to_be_bytes()));
        input.extend(frame(0x2, true, b"ignored"));
        assert_eq!(decode_chunked(&mut codec, &input, 100).unwrap(), b"mqtt");
        assert!(codec.close_received());
        assert_eq!(codec.output(), [0x88, 2, 0x03, 0xe9]);
        // Nothing is sent after the close frame.
        assert_eq!(codec.write(b"late"), 0);
    }

    proptest::proptest! {
        /// Whatever the client sends, decoding never panics, never yields
        /// more bytes than it was given, and stops at the first error.
        #[test]
        fn arbitrary_input_never_panics(input: Vec<u8>, chunk in 1usize..64) {
            let mut codec = WsCodec::new(Vec::new());
            for piece in input.chunks(chunk) {
                let mut buf = piece.to_vec();
                match codec.decode(&mut buf) {
                    Ok(n) => proptest::prop_assert!(n <= piece.len()),
                    Err(_) => {
                        proptest::prop_assert!(codec.close_received());
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn each_batch_is_one_binary_frame() {
        let mut codec = WsCodec::new(Vec::new());
        codec.write(b"ab");
        codec.write(b"c");
        assert!(codec.output().is_empty(), "an open batch is not sent");
        codec.seal();
        assert_eq!(codec.output(), [0x82, 3, b'a', b'b', b'c']);
        codec.consume(2);
        let big = vec![7u8; 300];
        codec.write(&big);
        codec.seal();
        let mut expected = vec![b'a', b'b', b'c', 0x82, 126, 1, 44];
        expected.extend_from_slice(&big);
        assert_eq!(codec.output(), expected);
        codec.consume(expected.len());
        assert!(codec.output().is_empty());
        // A pong queued while a batch is open seals the batch first.
        codec.write(b"x");
        let mut ping = frame(0x9, true, b"");
        codec.decode(&mut ping).unwrap();
        assert_eq!(codec.output(), [0x82, 1, b'x', 0x8a, 0]);
    }
}
