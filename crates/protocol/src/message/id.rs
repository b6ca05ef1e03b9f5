//! Message ids (reference 7): the offset message id (store host + commit-log
//! offset) and the client unique key (`UNIQ_KEY`) with its generator.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::stored::canonical_ip;
use crate::error::{ProtocolError, Result};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Length of an offset id (or unique key) built on an IPv4 address.
pub const MSG_ID_LEN_V4: usize = 32;
/// Length of an offset id (or unique key) built on an IPv6 address.
pub const MSG_ID_LEN_V6: usize = 56;

/// Appends the upper-case hex form of `bytes` (Java `UtilAll.bytes2string`).
pub fn push_hex(dst: &mut String, bytes: &[u8]) {
    dst.reserve(bytes.len() * 2);
    for b in bytes {
        dst.push(char::from(HEX[usize::from(b >> 4)]));
        dst.push(char::from(HEX[usize::from(b & 0x0F)]));
    }
}

/// Decodes hex (either case) into `dst`; `s` must have an even length.
fn hex_decode_into(s: &str, dst: &mut [u8]) -> Result<()> {
    let bytes = s.as_bytes();
    if bytes.len() != dst.len() * 2 {
        return Err(bad_id(s, "wrong length"));
    }
    for (i, out) in dst.iter_mut().enumerate() {
        let hi = hex_val(bytes[2 * i]).ok_or_else(|| bad_id(s, "not hex"))?;
        let lo = hex_val(bytes[2 * i + 1]).ok_or_else(|| bad_id(s, "not hex"))?;
        *out = (hi << 4) | lo;
    }
    Ok(())
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn bad_id(s: &str, why: &str) -> ProtocolError {
    ProtocolError::InvalidField {
        field: "msgId",
        value: s.chars().take(64).collect(),
        reason: why.into(),
    }
}

/// Offset message id: hex of store IP (4 or 16 bytes) + port (i32) +
/// physical offset (i64). IPv4-mapped IPv6 addresses are written as IPv4.
pub fn offset_msg_id(store_host: SocketAddr, physical_offset: i64) -> String {
    let mut s = String::with_capacity(MSG_ID_LEN_V6);
    push_offset_msg_id(&mut s, store_host, physical_offset);
    s
}

/// [`offset_msg_id`] appended to an existing string (no extra allocation).
pub fn push_offset_msg_id(dst: &mut String, store_host: SocketAddr, physical_offset: i64) {
    match canonical_ip(store_host.ip()) {
        IpAddr::V4(ip) => push_hex(dst, &ip.octets()),
        IpAddr::V6(ip) => push_hex(dst, &ip.octets()),
    }
    push_hex(dst, &i32::from(store_host.port()).to_be_bytes());
    push_hex(dst, &physical_offset.to_be_bytes());
}

/// Decodes an offset message id: IPv4 iff it has 32 characters, IPv6 iff 56.
pub fn decode_offset_msg_id(s: &str) -> Result<(SocketAddr, i64)> {
    let ip_len = match s.len() {
        MSG_ID_LEN_V4 => 4,
        MSG_ID_LEN_V6 => 16,
        _ => return Err(bad_id(s, "an offset id has 32 or 56 hex characters")),
    };
    let mut raw = [0u8; 28];
    let raw = &mut raw[..ip_len + 12];
    hex_decode_into(s, raw)?;
    let ip = if ip_len == 4 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&raw[..4]);
        IpAddr::V4(Ipv4Addr::from(a))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&raw[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let mut port = [0u8; 4];
    port.copy_from_slice(&raw[ip_len..ip_len + 4]);
    let port = i32::from_be_bytes(port);
    let port = u16::try_from(port).map_err(|_| bad_id(s, "port out of range"))?;
    let mut off = [0u8; 8];
    off.copy_from_slice(&raw[ip_len + 4..ip_len + 12]);
    Ok((SocketAddr::new(ip, port), i64::from_be_bytes(off)))
}

/// The fields of a unique key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniqKeyParts {
    pub ip: IpAddr,
    pub pid: u16,
    pub class_loader_hash: i32,
    /// Milliseconds since the start of the month the id was made in.
    pub millis_in_month: u32,
    pub counter: u16,
}

/// Splits a unique key (32 or 56 hex characters) into its fields.
pub fn decode_uniq_key(s: &str) -> Result<UniqKeyParts> {
    let ip_len = match s.len() {
        MSG_ID_LEN_V4 => 4,
        MSG_ID_LEN_V6 => 16,
        _ => return Err(bad_id(s, "a unique key has 32 or 56 hex characters")),
    };
    let mut raw = [0u8; 28];
    let raw = &mut raw[..ip_len + 12];
    hex_decode_into(s, raw)?;
    let ip = if ip_len == 4 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&raw[..4]);
        IpAddr::V4(Ipv4Addr::from(a))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&raw[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let r = &raw[ip_len..];
    Ok(UniqKeyParts {
        ip,
        pid: u16::from_be_bytes([r[0], r[1]]),
        class_loader_hash: i32::from_be_bytes([r[2], r[3], r[4], r[5]]),
        millis_in_month: u32::from_be_bytes([r[6], r[7], r[8], r[9]]),
        counter: u16::from_be_bytes([r[10], r[11]]),
    })
}

/// Approximate creation time (unix ms) of a unique key, as Java's
/// `getNearlyTimeFromID`: this month's start plus the span, or last month's
/// if that would lie in the future. `utc_offset_ms` is the zone the
/// producer used for "start of month".
pub fn uniq_key_timestamp(s: &str, now_ms: i64, utc_offset_ms: i64) -> Result<i64> {
    let parts = decode_uniq_key(s)?;
    let span = i64::from(parts.millis_in_month);
    let (this_month, _) = month_bounds(now_ms, utc_offset_ms);
    if this_month + span >= now_ms {
        let (prev_month, _) = month_bounds(this_month - 1, utc_offset_ms);
        Ok(prev_month + span)
    } else {
        Ok(this_month + span)
    }
}

/// Unix-ms start of the month containing `ms` and of the next month, in a
/// zone `utc_offset_ms` east of UTC.
pub fn month_bounds(ms: i64, utc_offset_ms: i64) -> (i64, i64) {
    let local = ms + utc_offset_ms;
    let days = local.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    let start = days_from_civil(y, m, 1) * 86_400_000 - utc_offset_ms;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = days_from_civil(ny, nm, 1) * 86_400_000 - utc_offset_ms;
    (start, next)
}

// Howard Hinnant's civil-calendar conversions (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Makes unique keys in Java's `MessageClientIDSetter` format: a fixed
/// prefix (IP, pid, a per-process random i32 standing in for the class
/// loader hash) then ms-since-month-start and a wrapping counter. One clock
/// read and one atomic add per id.
#[derive(Debug)]
pub struct UniqIdGenerator {
    prefix: String,
    utc_offset_ms: i64,
    counter: AtomicU32,
    month_start: AtomicI64,
    next_month_start: AtomicI64,
}

impl UniqIdGenerator {
    /// A generator for this host address and pid; "start of month" is taken
    /// in a zone `utc_offset_ms` east of UTC (Java uses the JVM's zone).
    pub fn new(ip: IpAddr, pid: u32, utc_offset_ms: i64) -> Self {
        let mut raw = Vec::with_capacity(22);
        match canonical_ip(ip) {
            IpAddr::V4(v4) => raw.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => raw.extend_from_slice(&v6.octets()),
        }
        raw.extend_from_slice(&(pid as u16).to_be_bytes());
        raw.extend_from_slice(&random_i32().to_be_bytes());
        let mut prefix = String::with_capacity(raw.len() * 2);
        push_hex(&mut prefix, &raw);
        let (start, next) = month_bounds(now_ms(), utc_offset_ms);
        UniqIdGenerator {
            prefix,
            utc_offset_ms,
            counter: AtomicU32::new(0),
            month_start: AtomicI64::new(start),
            next_month_start: AtomicI64::new(next),
        }
    }

    /// A process-wide generator on the first non-loopback IPv4 address we
    /// can guess cheaply (none: Java's fallback of low clock bytes), UTC.
    pub fn global() -> &'static UniqIdGenerator {
        static GLOBAL: OnceLock<UniqIdGenerator> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let ms = now_ms().to_be_bytes();
            let fake = IpAddr::V4(Ipv4Addr::new(ms[4], ms[5], ms[6], ms[7]));
            UniqIdGenerator::new(local_ip().unwrap_or(fake), std::process::id(), 0)
        })
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 12);
        self.push_next_id(&mut s);
        s
    }

    /// Appends the next id to `dst`.
    pub fn push_next_id(&self, dst: &mut String) {
        self.push_id_at(dst, now_ms());
    }

    /// Appends an id made at `now` (unix ms); used by tests.
    pub fn push_id_at(&self, dst: &mut String, now: i64) {
        if now >= self.next_month_start.load(Ordering::Relaxed)
            || now < self.month_start.load(Ordering::Relaxed)
        {
            // Month rollover (or the clock went back): racing threads
            // compute the same bounds.
            let (start, next) = month_bounds(now, self.utc_offset_ms);
            self.month_start.store(start, Ordering::Relaxed);
            self.next_month_start.store(next, Ordering::Relaxed);
        }
        let span = (now - self.month_start.load(Ordering::Relaxed)) as i32;
        let count = self.counter.fetch_add(1, Ordering::Relaxed) as u16;
        dst.push_str(&self.prefix);
        push_hex(dst, &span.to_be_bytes());
        push_hex(dst, &count.to_be_bytes());
    }
}

fn random_i32() -> i32 {
    // RandomState is seeded from the OS once per process: enough to tell
    // two producers on one host apart, like Java's class-loader hash.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_ms() as u128);
    h.finish() as i32
}

/// The local IPv4 address used to reach the outside (no packet is sent: a
/// UDP "connect" only selects a route).
fn local_ip() -> Option<IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_id_known_value() {
        // 10.0.192.122:10911, offset 0 (the example from Java docs).
        let addr: SocketAddr = "10.0.192.122:10911".parse().unwrap();
        assert_eq!(offset_msg_id(addr, 0), "0A00C07A00002A9F0000000000000000");
        let (a, o) = decode_offset_msg_id("0a00c07a00002a9f00000000000000ff").unwrap();
        assert_eq!((a, o), (addr, 255));
    }

    #[test]
    fn month_bounds_are_calendar_months() {
        // 2024-02-15T12:00:00Z
        let ms = 1_708_000_000_000;
        let (s, n) = month_bounds(ms, 0);
        assert_eq!(s, 1_706_745_600_000); // 2024-02-01
        assert_eq!(n, 1_709_251_200_000); // 2024-03-01 (leap year)
        let (s8, _) = month_bounds(ms, 8 * 3_600_000);
        assert_eq!(s8, 1_706_745_600_000 - 8 * 3_600_000);
    }

    #[test]
    fn generator_layout_and_timestamp() {
        let g = UniqIdGenerator::new("10.0.192.122".parse().unwrap(), 0x12345, 0);
        let now = 1_708_000_000_000;
        let mut a = String::new();
        g.push_id_at(&mut a, now);
        let mut b = String::new();
        g.push_id_at(&mut b, now);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let p = decode_uniq_key(&a).unwrap();
        assert_eq!(p.ip, "10.0.192.122".parse::<IpAddr>().unwrap());
        assert_eq!(p.pid, 0x2345);
        assert_eq!(p.counter + 1, decode_uniq_key(&b).unwrap().counter);
        assert_eq!(uniq_key_timestamp(&a, now + 1000, 0).unwrap(), now);
    }
}
