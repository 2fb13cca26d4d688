//! The protobuf messages of the `wa` handshake, by prost derive with WhatsApp's own field
//! numbers (checked against `WAProto.proto` as shipped in Baileys and pyaileys 0.1.5's
//! `pyaileys/proto/WAProto_pb2.py`; docs/protocol-wa.md). Only the fields we read or write
//! are declared; prost skips the others on decode. No logic lives here.
//!
//! [`ClientPayload`] carries the provider token: its `Debug` prints no token bytes.

use core::fmt;

/// `HandshakeMessage`: one of the three steps of the handshake per frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HandshakeMessage {
    #[prost(message, optional, tag = "2")]
    pub client_hello: Option<ClientHello>,
    #[prost(message, optional, tag = "3")]
    pub server_hello: Option<ServerHello>,
    #[prost(message, optional, tag = "4")]
    pub client_finish: Option<ClientFinish>,
}

/// `HandshakeMessage.ClientHello`: `-> e`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientHello {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub ephemeral: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub r#static: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub payload: Option<Vec<u8>>,
}

/// `HandshakeMessage.ServerHello`: `<- e, ee, s, es` and the encrypted certificate chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerHello {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub ephemeral: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub r#static: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub payload: Option<Vec<u8>>,
}

/// `HandshakeMessage.ClientFinish`: `-> s, se` and the encrypted `ClientPayload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientFinish {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub r#static: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub payload: Option<Vec<u8>>,
}

/// `CertChain`: the server's handshake payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertChain {
    #[prost(message, optional, tag = "1")]
    pub leaf: Option<NoiseCertificate>,
    #[prost(message, optional, tag = "2")]
    pub intermediate: Option<NoiseCertificate>,
}

/// `CertChain.NoiseCertificate`: encoded details and an XEdDSA signature over those bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NoiseCertificate {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub details: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub signature: Option<Vec<u8>>,
}

/// `CertChain.NoiseCertificate.Details`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertDetails {
    #[prost(uint32, optional, tag = "1")]
    pub serial: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub issuer_serial: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub key: Option<Vec<u8>>,
    /// Seconds since the Unix epoch.
    #[prost(uint64, optional, tag = "4")]
    pub not_before: Option<u64>,
    /// Seconds since the Unix epoch.
    #[prost(uint64, optional, tag = "5")]
    pub not_after: Option<u64>,
}

/// `ClientPayload`: the subset an interop client sends in `ClientFinish`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct ClientPayload {
    #[prost(uint64, optional, tag = "1")]
    pub username: Option<u64>,
    #[prost(bool, optional, tag = "3")]
    pub passive: Option<bool>,
    #[prost(message, optional, tag = "5")]
    pub user_agent: Option<UserAgent>,
    #[prost(string, optional, tag = "7")]
    pub push_name: Option<String>,
    #[prost(enumeration = "ConnectType", optional, tag = "12")]
    pub connect_type: Option<i32>,
    #[prost(enumeration = "ConnectReason", optional, tag = "13")]
    pub connect_reason: Option<i32>,
    #[prost(uint32, optional, tag = "18")]
    pub device: Option<u32>,
    #[prost(message, optional, tag = "19")]
    pub device_pairing_data: Option<DevicePairingData>,
    #[prost(enumeration = "Product", optional, tag = "20")]
    pub product: Option<i32>,
    #[prost(message, optional, tag = "38")]
    pub interop_data: Option<InteropData>,
}

impl fmt::Debug for ClientPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientPayload")
            .field("username", &self.username)
            .field("passive", &self.passive)
            .field("user_agent", &self.user_agent)
            .field("device", &self.device)
            .field("device_pairing_data", &self.device_pairing_data)
            .field("product", &self.product)
            .field("interop_data", &self.interop_data)
            .finish_non_exhaustive()
    }
}

/// `ClientPayload.UserAgent`, a few fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserAgent {
    #[prost(enumeration = "Platform", optional, tag = "1")]
    pub platform: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub app_version: Option<AppVersion>,
    #[prost(string, optional, tag = "5")]
    pub os_version: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub manufacturer: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub device: Option<String>,
}

/// `ClientPayload.UserAgent.AppVersion`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppVersion {
    #[prost(uint32, optional, tag = "1")]
    pub primary: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub secondary: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub tertiary: Option<u32>,
}

/// `ClientPayload.DevicePairingRegistrationData`, the fields that name the device's Signal
/// registration: registration id (4 bytes, big endian), key type (`[5]`) and identity key
/// (32 bytes). Public values only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DevicePairingData {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub e_regid: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub e_keytype: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub e_ident: Option<Vec<u8>>,
}

/// `ClientPayload.InteropData`: who the interop client is. The token is opaque here.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct InteropData {
    #[prost(uint64, optional, tag = "1")]
    pub account_id: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub token: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    pub enable_read_receipts: Option<bool>,
}

impl fmt::Debug for InteropData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteropData")
            .field("account_id", &self.account_id)
            .field("token_bytes", &self.token.as_ref().map(Vec::len))
            .field("enable_read_receipts", &self.enable_read_receipts)
            .finish()
    }
}

/// `ClientPayload.Product`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Product {
    Whatsapp = 0,
    Messenger = 1,
    Interop = 2,
    InteropMsgr = 3,
}

/// `ClientPayload.ConnectType`, the values an interop client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectType {
    CellularUnknown = 0,
    WifiUnknown = 1,
}

/// `ClientPayload.ConnectReason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectReason {
    Push = 0,
    UserActivated = 1,
    Scheduled = 2,
    ErrorReconnect = 3,
    NetworkSwitch = 4,
    PingReconnect = 5,
    Unknown = 6,
}

/// `ClientPayload.UserAgent.Platform`, the first values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Platform {
    Android = 0,
    Ios = 1,
    /// What Baileys and whatsmeow send for a companion that is not a phone.
    Web = 14,
}
