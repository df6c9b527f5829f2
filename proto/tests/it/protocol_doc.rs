//! docs/protocol.md and the rule catalogue list the same rules, with the same
//! levels: the prose cannot drift from the code.

use std::collections::BTreeMap;
use voxwire_proto::Rule;

fn documented_rules() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let text = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
    let mut rules = BTreeMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(id) = line.strip_prefix("### ") else {
            continue;
        };
        let id = id.trim();
        if !id.chars().all(|c| c.is_ascii_uppercase() || c == '-') {
            continue;
        }
        let level = lines
            .peek()
            .and_then(|next| next.strip_prefix("**"))
            .and_then(|rest| rest.split_once(".**"))
            .map(|(level, _)| level.to_string())
            .unwrap_or_default();
        assert!(
            rules.insert(id.to_string(), level).is_none(),
            "{id} is documented twice"
        );
    }
    rules
}

#[test]
fn every_rule_in_code_is_documented_with_its_level_and_no_other() {
    let documented = documented_rules();
    let in_code: BTreeMap<String, String> = Rule::ALL
        .iter()
        .map(|rule| (rule.id().to_string(), rule.level().to_string()))
        .collect();
    assert_eq!(documented, in_code);
}
