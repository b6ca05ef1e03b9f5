//! The RocketMQ remoting protocol as pure data: frames and their two header
//! serializations (JSON and ROCKETMQ binary), request/response codes, typed
//! custom headers (`extFields`), JSON bodies, and the message formats (the
//! properties string, the stored/pulled layout, client batches, message IDs).
//! Nothing here touches a socket or a file; every decoder returns an error
//! instead of panicking on bad input.

pub mod allocate;
pub mod body;
pub mod code;
pub mod codec;
pub mod command;
pub mod error;
pub mod ext_fields;
pub mod flags;
pub mod header;
pub mod java_properties;
mod json_header;
pub mod message;
pub mod pop;
pub mod recall;
pub mod topic;

pub use codec::FrameCodec;
pub use command::{LanguageCode, RemotingCommand, SerializeType};
pub use error::ProtocolError;
pub use ext_fields::ExtFields;
