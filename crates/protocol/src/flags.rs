//! Bit flags: `PullSysFlag` (pull request options), `PermName` (topic and
//! broker permissions) and `TopicSysFlag` (unit-mode markers), with the same
//! bit values and helpers as the Java classes of those names.

/// The `sysFlag` of a pull request (`PullMessageRequestHeader::sys_flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PullSysFlag(pub i32);

impl PullSysFlag {
    /// `commitOffset` is valid and should be stored as the group's offset.
    pub const COMMIT_OFFSET: i32 = 0x1;
    /// The broker may hold the request (long polling).
    pub const SUSPEND: i32 = 0x1 << 1;
    /// Use the header's `subscription`/`expressionType`, not the heartbeat's.
    pub const SUBSCRIPTION: i32 = 0x1 << 2;
    /// Legacy class-filter mode.
    pub const CLASS_FILTER: i32 = 0x1 << 3;
    /// Sent by the lite pull consumer (code 361).
    pub const LITE_PULL: i32 = 0x1 << 4;

    /// Builds a flag from its parts (Java `buildSysFlag`).
    pub fn build(
        commit_offset: bool,
        suspend: bool,
        subscription: bool,
        class_filter: bool,
        lite_pull: bool,
    ) -> Self {
        let mut f = 0;
        for (on, bit) in [
            (commit_offset, Self::COMMIT_OFFSET),
            (suspend, Self::SUSPEND),
            (subscription, Self::SUBSCRIPTION),
            (class_filter, Self::CLASS_FILTER),
            (lite_pull, Self::LITE_PULL),
        ] {
            if on {
                f |= bit;
            }
        }
        PullSysFlag(f)
    }

    fn has(self, bit: i32) -> bool {
        self.0 & bit == bit
    }

    pub fn has_commit_offset(self) -> bool {
        self.has(Self::COMMIT_OFFSET)
    }
    pub fn has_suspend(self) -> bool {
        self.has(Self::SUSPEND)
    }
    pub fn has_subscription(self) -> bool {
        self.has(Self::SUBSCRIPTION)
    }
    pub fn has_class_filter(self) -> bool {
        self.has(Self::CLASS_FILTER)
    }
    pub fn has_lite_pull(self) -> bool {
        self.has(Self::LITE_PULL)
    }

    /// Without COMMIT_OFFSET (done when pulling from a slave).
    pub fn clear_commit_offset(self) -> Self {
        PullSysFlag(self.0 & !Self::COMMIT_OFFSET)
    }
    /// Without SUSPEND (a held request is re-run without suspension).
    pub fn clear_suspend(self) -> Self {
        PullSysFlag(self.0 & !Self::SUSPEND)
    }
    /// With SUBSCRIPTION set.
    pub fn with_subscription(self) -> Self {
        PullSysFlag(self.0 | Self::SUBSCRIPTION)
    }
}

/// Permission bits of topics and brokers (`PermName.java`).
pub struct PermName;

impl PermName {
    pub const PERM_PRIORITY: i32 = 0x1 << 3;
    pub const PERM_READ: i32 = 0x1 << 2;
    pub const PERM_WRITE: i32 = 0x1 << 1;
    pub const PERM_INHERIT: i32 = 0x1;

    pub fn is_readable(perm: i32) -> bool {
        perm & Self::PERM_READ == Self::PERM_READ
    }
    pub fn is_writeable(perm: i32) -> bool {
        perm & Self::PERM_WRITE == Self::PERM_WRITE
    }
    pub fn is_inherited(perm: i32) -> bool {
        perm & Self::PERM_INHERIT == Self::PERM_INHERIT
    }
    pub fn is_priority(perm: i32) -> bool {
        perm & Self::PERM_PRIORITY == Self::PERM_PRIORITY
    }
    /// Readable or writeable.
    pub fn is_accessible(perm: i32) -> bool {
        Self::is_readable(perm) || Self::is_writeable(perm)
    }
    /// Java's `isValid`: 0 ≤ perm < PERM_PRIORITY.
    pub fn is_valid(perm: i32) -> bool {
        (0..Self::PERM_PRIORITY).contains(&perm)
    }

    /// Three characters as Java's `perm2String`: `R` or `-`, `W` or `-`,
    /// `X` (inherit) or `-`; e.g. 6 → `RW-`.
    pub fn perm_to_string(perm: i32) -> String {
        let mut s = String::with_capacity(3);
        s.push(if Self::is_readable(perm) { 'R' } else { '-' });
        s.push(if Self::is_writeable(perm) { 'W' } else { '-' });
        s.push(if Self::is_inherited(perm) { 'X' } else { '-' });
        s
    }
}

/// A topic's `topicSysFlag` (unit-mode markers, `TopicSysFlag.java`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TopicSysFlag(pub i32);

impl TopicSysFlag {
    pub const UNIT: i32 = 0x1;
    pub const UNIT_SUB: i32 = 0x1 << 1;

    pub fn build(unit: bool, has_unit_sub: bool) -> Self {
        let mut f = 0;
        if unit {
            f |= Self::UNIT;
        }
        if has_unit_sub {
            f |= Self::UNIT_SUB;
        }
        TopicSysFlag(f)
    }
    pub fn has_unit(self) -> bool {
        self.0 & Self::UNIT == Self::UNIT
    }
    pub fn has_unit_sub(self) -> bool {
        self.0 & Self::UNIT_SUB == Self::UNIT_SUB
    }
    pub fn set_unit(self) -> Self {
        TopicSysFlag(self.0 | Self::UNIT)
    }
    pub fn clear_unit(self) -> Self {
        TopicSysFlag(self.0 & !Self::UNIT)
    }
    pub fn set_unit_sub(self) -> Self {
        TopicSysFlag(self.0 | Self::UNIT_SUB)
    }
    pub fn clear_unit_sub(self) -> Self {
        TopicSysFlag(self.0 & !Self::UNIT_SUB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_flag_matches_java_push_consumer_values() {
        // Java push consumer, clustering, offset > 0: COMMIT_OFFSET | SUSPEND = 3.
        let f = PullSysFlag::build(true, true, false, false, false);
        assert_eq!(f.0, 3);
        assert!(f.has_commit_offset() && f.has_suspend());
        assert!(!f.has_subscription() && !f.has_class_filter() && !f.has_lite_pull());
        assert_eq!(f.clear_commit_offset().0, 2);
        assert_eq!(f.clear_suspend().0, 1);
        assert_eq!(f.with_subscription().0, 7);
        let lite = PullSysFlag::build(false, false, true, false, true);
        assert_eq!(lite.0, 0x14);
        assert!(lite.has_lite_pull() && lite.has_subscription());
    }

    #[test]
    fn perm_strings_like_java() {
        assert_eq!(PermName::perm_to_string(6), "RW-");
        assert_eq!(PermName::perm_to_string(4), "R--");
        assert_eq!(PermName::perm_to_string(2), "-W-");
        assert_eq!(PermName::perm_to_string(7), "RWX");
        assert_eq!(PermName::perm_to_string(0), "---");
        assert!(PermName::is_readable(6) && PermName::is_writeable(6));
        assert!(!PermName::is_writeable(4));
        assert!(PermName::is_valid(7) && !PermName::is_valid(8) && !PermName::is_valid(-1));
        assert!(PermName::is_priority(8 | 6));
        assert!(!PermName::is_accessible(1));
    }

    #[test]
    fn topic_sys_flag_bits() {
        let f = TopicSysFlag::build(true, true);
        assert_eq!(f.0, 3);
        assert!(f.has_unit() && f.has_unit_sub());
        assert_eq!(f.clear_unit(), TopicSysFlag(2));
        assert_eq!(TopicSysFlag(0).set_unit_sub(), TopicSysFlag(2));
        assert!(!f.clear_unit_sub().has_unit_sub());
        assert_eq!(TopicSysFlag(0).set_unit().0, 1);
    }
}
