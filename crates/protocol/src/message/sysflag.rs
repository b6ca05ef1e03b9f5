//! `MessageSysFlag` bits: compression, tag filter type, transaction type,
//! IPv6 host encoding and inner batches (reference 6.5).

/// BODY holds compressed bytes.
pub const COMPRESSED: i32 = 0x1;
/// Topic filter type MULTI_TAG (set by the broker from the topic config).
pub const MULTI_TAGS: i32 = 0x1 << 1;
/// Transaction type field (2 bits): not a transactional record.
pub const TRANSACTION_NOT_TYPE: i32 = 0;
/// Transaction type field: prepared (half) message; not dispatched to a consume queue.
pub const TRANSACTION_PREPARED_TYPE: i32 = 0x1 << 2;
/// Transaction type field: commit record.
pub const TRANSACTION_COMMIT_TYPE: i32 = 0x2 << 2;
/// Transaction type field: rollback record; neither dispatched nor indexed.
pub const TRANSACTION_ROLLBACK_TYPE: i32 = 0x3 << 2;
/// Mask of the 2-bit transaction type field (equal to the ROLLBACK value, as in Java).
pub const TRANSACTION_TYPE_MASK: i32 = TRANSACTION_ROLLBACK_TYPE;
/// BORNHOST is a 16-byte IPv6 address + port (20 bytes instead of 8).
pub const BORNHOST_V6: i32 = 0x1 << 4;
/// STOREHOST is a 16-byte IPv6 address + port (20 bytes instead of 8).
pub const STOREHOSTADDRESS_V6: i32 = 0x1 << 5;
/// The record must be unwrapped by the client (inner batch).
pub const NEED_UNWRAP: i32 = 0x1 << 6;
/// The record's body is an inner batch (batch consume-queue topics).
pub const INNER_BATCH: i32 = 0x1 << 7;
/// Mask of the 3-bit compression type field (5.x).
pub const COMPRESSION_TYPE_MASK: i32 = 0x7 << 8;
/// Compression type field values (already shifted into place).
pub const COMPRESSION_LZ4: i32 = 0x1 << 8;
pub const COMPRESSION_ZSTD: i32 = 0x2 << 8;
pub const COMPRESSION_ZLIB: i32 = 0x3 << 8;

/// The transaction type bits of `flag` (one of the `TRANSACTION_*_TYPE` values).
#[inline]
pub fn transaction_value(flag: i32) -> i32 {
    flag & TRANSACTION_TYPE_MASK
}

/// `flag` with its transaction type replaced by `ty`.
#[inline]
pub fn reset_transaction_value(flag: i32, ty: i32) -> i32 {
    (flag & !TRANSACTION_TYPE_MASK) | (ty & TRANSACTION_TYPE_MASK)
}

/// `flag` without the COMPRESSED bit (what a consumer sees after inflating).
#[inline]
pub fn clear_compressed_flag(flag: i32) -> i32 {
    flag & !COMPRESSED
}

/// True if any bit of `expected` is set in `flag` (Java `MessageSysFlag.check`).
#[inline]
pub fn check(flag: i32, expected: i32) -> bool {
    flag & expected != 0
}

/// Whether a record with this flag goes to a consume queue: prepared and
/// rolled-back transactional records are kept out.
#[inline]
pub fn is_dispatchable(flag: i32) -> bool {
    matches!(
        transaction_value(flag),
        TRANSACTION_NOT_TYPE | TRANSACTION_COMMIT_TYPE
    )
}

/// Length of the BORNHOST field for this flag (8 or 20).
#[inline]
pub fn born_host_len(flag: i32) -> usize {
    if flag & BORNHOST_V6 == 0 {
        8
    } else {
        20
    }
}

/// Length of the STOREHOST field for this flag (8 or 20).
#[inline]
pub fn store_host_len(flag: i32) -> usize {
    if flag & STOREHOSTADDRESS_V6 == 0 {
        8
    } else {
        20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_the_reference_table() {
        assert_eq!(COMPRESSED, 0x1);
        assert_eq!(MULTI_TAGS, 0x2);
        assert_eq!(TRANSACTION_PREPARED_TYPE, 0x4);
        assert_eq!(TRANSACTION_COMMIT_TYPE, 0x8);
        assert_eq!(TRANSACTION_ROLLBACK_TYPE, 0xC);
        assert_eq!(BORNHOST_V6, 0x10);
        assert_eq!(STOREHOSTADDRESS_V6, 0x20);
        assert_eq!(NEED_UNWRAP, 0x40);
        assert_eq!(INNER_BATCH, 0x80);
        assert_eq!(COMPRESSION_TYPE_MASK, 0x700);
        assert_eq!(COMPRESSION_ZLIB, 0x300);
    }

    #[test]
    fn transaction_helpers() {
        let f = COMPRESSED | TRANSACTION_PREPARED_TYPE;
        assert_eq!(transaction_value(f), TRANSACTION_PREPARED_TYPE);
        let g = reset_transaction_value(f, TRANSACTION_COMMIT_TYPE);
        assert_eq!(g, COMPRESSED | TRANSACTION_COMMIT_TYPE);
        assert!(!is_dispatchable(f));
        assert!(is_dispatchable(g));
        assert!(!is_dispatchable(TRANSACTION_ROLLBACK_TYPE));
        assert_eq!(clear_compressed_flag(g), TRANSACTION_COMMIT_TYPE);
        assert_eq!(born_host_len(BORNHOST_V6), 20);
        assert_eq!(store_host_len(BORNHOST_V6), 8);
    }
}
