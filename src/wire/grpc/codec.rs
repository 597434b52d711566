//! The protobuf codec of the generated stubs (real world only: build.rs names it with
//! tonic-build's `codec_path`; madsim-tonic passes messages without encoding them).
//!
//! Encoding is prost's, as in tonic's own codec. Decoding differs in one way: bytes that are not
//! a valid message are INVALID_ARGUMENT naming the message type, not tonic's INTERNAL "failed to
//! decode Protobuf message" (a client's mistake is never INTERNAL). The same codec serves the
//! generated clients, where the code just reads as "the server sent a bad message".

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// Encodes `T` and decodes `U` with prost (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct ProtoCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec(PhantomData)
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

/// Decodes one `U` per gRPC message; undecodable bytes are INVALID_ARGUMENT.
#[derive(Debug)]
pub struct ProtoDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {error}",
                message_name::<U>()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The unqualified Rust name of `U`, which is its protobuf message name.
fn message_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::FindMissingBlobsRequest;

    #[test]
    fn names_are_the_message_names() {
        assert_eq!(
            message_name::<FindMissingBlobsRequest>(),
            "FindMissingBlobsRequest"
        );
    }
}
