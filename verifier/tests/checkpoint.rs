//! Signed notes and checkpoints: the C2SP example, strict parsing, and
//! single-byte mutations of every byte of a signed checkpoint.

use ed25519_dalek::SigningKey;
use verifier::checkpoint::{self, Checkpoint, CheckpointError};
use verifier::note::{self, NoteError};

fn key(seed: u8) -> (String, SigningKey, [u8; 32]) {
    let signing = SigningKey::from_bytes(&[seed; 32]);
    let public = signing.verifying_key().to_bytes();
    (format!("node-{seed}.example"), signing, public)
}

fn cp() -> Checkpoint {
    Checkpoint {
        origin: "asn-ledger.example/test".to_owned(),
        size: 1234,
        root: [7; 32],
        head_hash: [9; 32],
        time_ms: 1767225600000,
    }
}

#[test]
fn c2sp_signed_note_example() {
    // c2sp.org/signed-note, "Example".
    let (name, public) =
        note::parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
            .expect("vkey");
    let text = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
    let (body, signers) = note::verify(text, &[(name.clone(), public)]).expect("verifies");
    assert_eq!(body, "This is an example message.\n");
    assert_eq!(signers, ["example.com/foo"]);
    assert_eq!(
        note::vkey(&name, &public),
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    );
    assert_eq!(checkpoint::key_id(&name, &public), [0x53, 0x0d, 0x90, 0x3a]);
}

#[test]
fn sign_and_verify() {
    let (name, signing, public) = key(1);
    let signed = checkpoint::sign(&cp(), &name, &signing);
    assert!(signed.starts_with(&checkpoint::body_text(&cp())));
    assert_eq!(
        checkpoint::body_text(&cp()),
        "asn-ledger.example/test\n1234\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\nhead 0909090909090909090909090909090909090909090909090909090909090909\ntime 1767225600000\n"
    );
    let keys = vec![(name.clone(), public)];
    assert_eq!(
        checkpoint::verify(&signed, &keys),
        Ok((cp(), vec![name.clone()]))
    );

    // A cosignature by an unknown key is ignored; by a known key, counted.
    let (name2, signing2, public2) = key(2);
    let cosigned = checkpoint::cosign(&signed, &name2, &signing2).expect("cosign");
    assert_eq!(
        checkpoint::verify(&cosigned, &keys).map(|r| r.1),
        Ok(vec![name.clone()])
    );
    let both = vec![(name.clone(), public), (name2.clone(), public2)];
    assert_eq!(
        checkpoint::verify(&cosigned, &both).map(|r| r.1),
        Ok(vec![name.clone(), name2.clone()])
    );
    // Only unknown keys: rejected.
    assert_eq!(
        checkpoint::verify(&signed, &[(name2.clone(), public2)]),
        Err(CheckpointError::Note(NoteError::NoKnownSignature))
    );
    // Right name, other key: the key id differs, rejected.
    assert_eq!(
        checkpoint::verify(&signed, &[(name.clone(), public2)]),
        Err(CheckpointError::Note(NoteError::UnknownKeyId(name.clone())))
    );
    // A known key whose signature fails rejects the note, even if another verifies.
    let last_line_start = cosigned.trim_end().rfind('\n').expect("line") + 1;
    let mut tampered = cosigned[..last_line_start].to_owned();
    let line = &cosigned[last_line_start..];
    let (prefix, sig) = line.rsplit_once(' ').expect("sig");
    let mut sig_bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig.trim_end())
            .expect("b64");
    sig_bytes[10] ^= 1;
    tampered.push_str(prefix);
    tampered.push(' ');
    tampered.push_str(&base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &sig_bytes,
    ));
    tampered.push('\n');
    assert_eq!(
        checkpoint::verify(&tampered, &both),
        Err(CheckpointError::Note(NoteError::BadSignature(
            name2.clone()
        )))
    );
}

#[test]
fn every_byte_of_a_signed_checkpoint_matters() {
    let (name, signing, public) = key(3);
    let (name2, signing2, public2) = key(4);
    let signed = checkpoint::sign(&cp(), &name, &signing);
    let cosigned = checkpoint::cosign(&signed, &name2, &signing2).expect("cosign");
    let keys = vec![(name, public), (name2, public2)];
    // With one signature, every change is rejected. With two, a change
    // that turns one signature line into an unknown key's is ignored as the
    // spec requires (C2SP: unknown signatures MUST be ignored): the note
    // then verifies with strictly fewer signers and the same checkpoint.
    for note_text in [&signed, &cosigned] {
        let (want_cp, want_signers) = checkpoint::verify(note_text, &keys).expect("verifies");
        let bytes = note_text.as_bytes();
        // (Signature checks are slow in debug builds: two masks, one that
        // keeps ASCII and one that breaks UTF-8 or leaves it.)
        let masks: &[u8] = if note_text == &signed {
            &[0x01, 0x80]
        } else {
            &[0x01]
        };
        for i in 0..bytes.len() {
            for &mask in masks {
                let mut changed = bytes.to_vec();
                changed[i] ^= mask;
                if let Ok(text) = std::str::from_utf8(&changed) {
                    match checkpoint::verify(text, &keys) {
                        Err(_) => {}
                        Ok((cp, signers)) => {
                            assert!(
                                note_text == &cosigned
                                    && cp == want_cp
                                    && signers.len() < want_signers.len(),
                                "byte {i} ^ {mask:#x} accepted: {text:?}"
                            );
                        }
                    }
                }
            }
        }
        // Removed or added bytes anywhere.
        if note_text == &signed {
            for i in 0..bytes.len() {
                let mut shorter = bytes.to_vec();
                shorter.remove(i);
                if let Ok(text) = std::str::from_utf8(&shorter) {
                    assert!(checkpoint::verify(text, &keys).is_err(), "without byte {i}");
                }
            }
        }
        for extra in ["\n", " ", "x", "\u{2014} a AAAA\n"] {
            assert!(checkpoint::verify(&format!("{note_text}{extra}"), &keys).is_err());
            assert!(checkpoint::verify(&format!("{extra}{note_text}"), &keys).is_err());
        }
    }
}

#[test]
fn malformed_bodies_are_rejected() {
    let (name, signing, public) = key(5);
    let keys = vec![(name.clone(), public)];
    let root = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let head = "head 0909090909090909090909090909090909090909090909090909090909090909";
    let bodies = [
        format!("o\n01\n{root}\n{head}\ntime 1\n"),
        format!("o\n+1\n{root}\n{head}\ntime 1\n"),
        format!("o\n-1\n{root}\n{head}\ntime 1\n"),
        format!("o\n18446744073709551616\n{root}\n{head}\ntime 1\n"),
        format!("\n1\n{root}\n{head}\ntime 1\n"),
        format!("o\n1\n{}\n{head}\ntime 1\n", &root[..40]),
        format!("o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwd=\n{head}\ntime 1\n"),
        format!(
            "o\n1\n{root}\nhead 0A09090909090909090909090909090909090909090909090909090909090909\ntime 1\n"
        ),
        format!(
            "o\n1\n{root}\nHead 0909090909090909090909090909090909090909090909090909090909090909\ntime 1\n"
        ),
        format!("o\n1\n{root}\nhead 09\ntime 1\n"),
        format!("o\n1\n{root}\n{head}\ntime -0\n"),
        format!("o\n1\n{root}\n{head}\ntime 01\n"),
        format!("o\n1\n{root}\n{head}\ntime 1\nextra\n"),
        format!("o\n1\n{root}\n{head}\n"),
        format!("o\n1\n{root}\n{head}\ntime 1"),
        format!("o\n1\n{root}\ntime 1\n{head}\n"),
    ];
    for body in bodies {
        let signed = note::sign(&body, &name, &signing);
        assert!(checkpoint::verify(&signed, &keys).is_err(), "{body:?}");
    }
    // Negative times and size 0 are fine.
    let ok = format!("o\n0\n{root}\n{head}\ntime -5\n");
    assert!(checkpoint::verify(&note::sign(&ok, &name, &signing), &keys).is_ok());
}

#[test]
fn malformed_notes_are_rejected() {
    let (name, signing, public) = key(6);
    let keys = vec![(name.clone(), public)];
    let signed = checkpoint::sign(&cp(), &name, &signing);
    let body = checkpoint::body_text(&cp());
    let sig_line = &signed[body.len() + 1..];
    let cases = [
        format!("{body}{sig_line}"),                              // no blank line
        format!("{body}\n"),                                      // no signature
        format!("{body}\n{}", sig_line.trim_end()),               // no final newline
        format!("{body}\n{sig_line}{sig_line}"),                  // duplicate
        format!("{body}\n{}", sig_line.replace('\u{2014}', "-")), // not an em dash
        format!("{body}\n{}", sig_line.replacen(' ', "  ", 1)),
        format!("{body}\n{}", sig_line.replace('=', "")), // unpadded base64
        format!("{}\r\n\n{sig_line}", body.trim_end()),   // control character
        format!("\n\n{sig_line}"),                        // empty text
    ];
    for case in cases {
        assert!(checkpoint::verify(&case, &keys).is_err(), "{case:?}");
    }
    assert!(note::parse_vkey("a+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k").is_err());
    assert!(
        note::parse_vkey("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
            .is_err()
    );
    assert!(note::parse_vkey("example.com/foo+530d903a").is_err());
    assert!(note::parse_vkey("example.com/foo+530d903a+").is_err());
}
