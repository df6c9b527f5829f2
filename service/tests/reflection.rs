//! Reflection lists what a server serves, over v1 and v1alpha alike.
//!
//! Regression (issue 22): workers listed every voxwire service, the
//! orchestrator's among them, and only v1 answered, so older grpcurl, Postman
//! and evans (which ask v1alpha) saw nothing.

use std::collections::BTreeSet;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic_reflection::pb::{v1, v1alpha};

async fn serve(served: &'static [&'static str]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let router = Server::builder()
        .add_service(voxwire_service::reflection(served).expect("v1 reflection"))
        .add_service(voxwire_service::reflection_v1alpha(served).expect("v1alpha reflection"));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    format!("http://{addr}")
}

fn expected(served: &[&str]) -> BTreeSet<String> {
    served
        .iter()
        .chain(&[
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .map(|s| s.to_string())
        .collect()
}

#[tokio::test]
async fn a_worker_lists_only_what_it_serves_over_v1_and_v1alpha() {
    const SERVED: &[&str] = &["tts.TTSService"];
    let url = serve(SERVED).await;
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = [
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "tts.AudioFrame".into(),
                ),
            ),
        },
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1 reflection answers")
        .into_inner();
    let listed = match answers
        .message()
        .await
        .expect("a reply")
        .and_then(|r| r.message_response)
    {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|s| s.name)
            .collect::<BTreeSet<_>>(),
        other => panic!("not a service list: {other:?}"),
    };
    assert_eq!(listed, expected(SERVED));
    match answers
        .message()
        .await
        .expect("a reply")
        .and_then(|r| r.message_response)
    {
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => panic!("tts.AudioFrame did not resolve: {other:?}"),
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let listed = match answers
        .message()
        .await
        .expect("a reply")
        .and_then(|r| r.message_response)
    {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service
                .into_iter()
                .map(|s| s.name)
                .collect::<BTreeSet<_>>()
        }
        other => panic!("not a service list: {other:?}"),
    };
    assert_eq!(listed, expected(SERVED));
}
