//! Placeholder so the crate compiles until BC commits the real module.
// placeholder owned by BC: replace

use std::collections::BTreeMap;
use std::sync::Arc;

use apogee_protocol::message::MessageToStore;

use crate::config::BrokerConfig;
use crate::context::BrokerContext;
use crate::error::BrokerError;

/// Why a delayed message cannot be accepted (placeholder).
#[derive(Debug, thiserror::Error)]
#[error("delayed delivery unavailable")]
pub struct ScheduleError;

impl ScheduleError {
    pub fn response_code(&self) -> i32 {
        apogee_protocol::code::response_code::SYSTEM_ERROR
    }
}

/// Delayed-delivery service (placeholder).
pub struct ScheduleMessageService {
    levels: usize,
}

impl ScheduleMessageService {
    pub fn new(config: &BrokerConfig) -> Result<Self, BrokerError> {
        Ok(ScheduleMessageService {
            levels: config.delay_levels().len(),
        })
    }

    pub fn transform(&self, _msg: &mut MessageToStore) -> bool {
        false
    }

    pub fn try_transform(&self, _msg: &mut MessageToStore) -> Result<bool, ScheduleError> {
        Ok(false)
    }

    pub fn start(&self, _ctx: &Arc<BrokerContext>) {}

    pub fn shutdown(&self) {}

    pub fn delay_level_count(&self) -> usize {
        self.levels
    }

    pub fn progress(&self) -> BTreeMap<i32, i64> {
        BTreeMap::new()
    }
}
