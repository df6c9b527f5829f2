// Shared by the targets: cut the input into length-prefixed pieces, so one
// input is a whole stream of messages (what a client sends on one call).

/// Splits `data` into pieces, each prefixed by one length byte.
pub fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let len = usize::from(len).min(tail.len());
        let (piece, tail) = tail.split_at(len);
        rest = tail;
        Some(piece)
    })
}
