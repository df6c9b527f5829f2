//! Input limits every server shares. The protocol's own limits (text length,
//! audio chunk size, stream duration) live with their rules in voxwire-proto;
//! these are transport-level.

/// Largest gRPC message a server decodes, in bytes: tonic's own default
/// (4 MiB), named so every server states it and a flag can change it. A
/// larger message is refused with OUT_OF_RANGE (tonic's code for it) before
/// it is decoded.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
