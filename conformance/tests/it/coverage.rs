//! A MUST or SHOULD case that no fault fails is a check nobody has seen fail:
//! every one must appear in a fault table.

use crate::support;

use voxwire_conformance::{catalogue, CaseLevel};

#[test]
fn every_must_and_should_case_is_failed_by_some_fault() {
    let _gate = crate::GATE.enter(module_path!());
    let covered: Vec<&str> = support::TTS_FAULTS
        .iter()
        .flat_map(|(_, cases)| cases.iter().copied())
        .chain(
            support::STT_FAULTS
                .iter()
                .flat_map(|(_, cases)| cases.iter().copied()),
        )
        .collect();
    let uncovered: Vec<&str> = catalogue()
        .iter()
        .filter(|c| c.level != CaseLevel::Info)
        .map(|c| c.id)
        .filter(|id| !covered.contains(id))
        .collect();
    assert!(uncovered.is_empty(), "cases no fault fails: {uncovered:?}");
}

#[test]
fn fault_tables_name_only_real_cases() {
    let _gate = crate::GATE.enter(module_path!());
    for (_, cases) in support::TTS_FAULTS {
        for id in *cases {
            assert!(catalogue::find(id).is_some(), "{id} is not a case");
        }
    }
    for (_, cases) in support::STT_FAULTS {
        for id in *cases {
            assert!(catalogue::find(id).is_some(), "{id} is not a case");
        }
    }
}
