//! Client connections and the texts the load runs speak.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use voxwire_proto::tts::tts_service_client::TtsServiceClient;

use crate::error::{BenchError, Result};

/// One HTTP/2 connection to `addr`.
pub async fn connect(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(BenchError::Transport)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// `per_addr` connections to each address, interleaved (a, b, a, b...), so
/// that session `i` on client `i % len` spreads sessions evenly over the
/// addresses.
pub async fn tts_clients(
    addrs: &[String],
    per_addr: usize,
) -> Result<Vec<TtsServiceClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..per_addr.max(1) {
        for addr in addrs {
            clients.push(TtsServiceClient::new(connect(addr).await?));
        }
    }
    Ok(clients)
}

/// Text the tone engine speaks for about `seconds`: short sentences (the
/// first frame comes after the first one is synthesized), 30 ms of audio
/// per character.
pub fn tone_text(seconds: f64) -> String {
    const SENTENCE: &str = "abc def ghi jkl mno pqr.";
    let chars_wanted = (seconds * 1000.0 / 30.0).ceil() as usize;
    let per = SENTENCE.chars().count();
    let sentences = chars_wanted.div_ceil(per).max(1);
    vec![SENTENCE; sentences].join(" ")
}

/// Text whose audio is mostly silence, so the tone engine spends almost
/// nothing computing it and an unpaced stream is limited by the hops, not
/// by synthesis: sentences of one tone, a long pause and another tone.
pub fn cheap_text(sentences: usize) -> String {
    let sentence = format!("a{}b.", " ".repeat(150));
    vec![sentence; sentences].join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_text_lasts_about_as_asked() {
        let text = tone_text(3.0);
        let chars = text.chars().count();
        assert!((100..=130).contains(&chars), "{chars}");
        assert!(text.ends_with('.'));
    }
}
