//! Bit flags: `PullSysFlag`, `PermName` and `TopicSysFlag`.
