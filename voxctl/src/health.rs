//! `voxctl health`: is this server SERVING? Container health checks call it,
//! so the question asked is the real one (not "does the port accept TCP").

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::{connect_with, within, ClientError, ClientOptions};

/// The status `service` reports (`""` for the whole server).
pub async fn check(target: &str, service: &str) -> Result<ServingStatus, ClientError> {
    check_with(target, &ClientOptions::default(), service).await
}

/// [`check`] over TLS (health needs no token).
pub async fn check_with(
    target: &str,
    options: &ClientOptions,
    service: &str,
) -> Result<ServingStatus, ClientError> {
    let channel = connect_with(target, options).await?;
    let call = async {
        Ok(HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?)
    };
    let response = within(
        options.call_timeout,
        &format!("{target}: no health answer"),
        "--call-timeout-ms",
        call,
    )
    .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
