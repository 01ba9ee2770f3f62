//! espeak-ng as a subprocess: the IPA phonemes of a sentence's clauses in an espeak-ng voice,
//! each followed by its punctuation mark as the voices were trained (Piper's phonemizer does the
//! same through espeak-ng's library).
//!
//! One process per clause: espeak-ng's command line prints a clause per line but not the mark
//! that ended it, so the clauses are cut here (`text`) and phonemized one by one (about 15 ms
//! each, small beside the model). The text goes in on stdin, never through a shell or the
//! argument list, and the voice name is checked to be a plain name.

use super::text::Clause;
use anyhow::{Context, bail};
use std::io::Write;
use std::process::{Command, Stdio};

/// The phonemes of each clause with its mark appended (and a space after `, : ;`, which do not
/// end the sentence); clauses espeak-ng finds nothing to say in are left out.
pub(super) fn sentence(clauses: &[Clause<'_>], voice: &str) -> anyhow::Result<Vec<String>> {
    check_voice(voice)?;
    let mut out = Vec::with_capacity(clauses.len());
    for clause in clauses {
        let mut phonemes = phonemize(clause.text, voice)?;
        if phonemes.is_empty() {
            continue;
        }
        if let Some(mark) = clause.terminator {
            phonemes.push(mark);
            if matches!(mark, ',' | ':' | ';') {
                phonemes.push(' ');
            }
        }
        out.push(phonemes);
    }
    Ok(out)
}

/// espeak-ng voice names are letters, digits and `-_+` (`en-us`, `cmn`, `en+f3`).
fn check_voice(voice: &str) -> anyhow::Result<()> {
    let plain = voice
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && voice
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'));
    if !plain || voice.len() > 64 {
        bail!("`{voice}` is not an espeak-ng voice name");
    }
    Ok(())
}

/// One clause's IPA: espeak-ng's lines joined by spaces, without its language-switch flags
/// (`(fr)`) and zero-width joiners.
fn phonemize(text: &str, voice: &str) -> anyhow::Result<String> {
    let mut child = Command::new("espeak-ng")
        // -q: no audio; -b 1: the input is UTF-8.
        .args(["-q", "--ipa", "-b", "1", "-v", voice, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "espeak-ng is not installed (apt-get install espeak-ng): the voices need it to \
                 turn text into phonemes"
            ),
            _ => anyhow::Error::new(e).context("starting espeak-ng"),
        })?;
    // Written from another thread: a large clause's output could fill the stdout pipe while
    // stdin is still being written.
    let mut stdin = child.stdin.take().context("espeak-ng's stdin")?;
    let input = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().context("running espeak-ng")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to espeak-ng panicked"))?
        .context("writing to espeak-ng")?;
    if !output.status.success() {
        bail!(
            "espeak-ng failed ({}) with voice `{voice}`: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let ipa = String::from_utf8(output.stdout).context("espeak-ng printed non-UTF-8")?;
    Ok(clean(&ipa))
}

/// espeak-ng's output lines as one clause: flags and joiners removed, whitespace collapsed.
fn clean(ipa: &str) -> String {
    let mut out = String::with_capacity(ipa.len());
    let mut in_flag = false;
    for c in ipa.chars() {
        match c {
            '(' => in_flag = true,
            ')' if in_flag => in_flag = false,
            _ if in_flag => {}
            '\u{200d}' => {}
            c if c.is_whitespace() => {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_flags_joiners_and_lines() {
        assert_eq!(
            clean("ʃˈɛɹ (fr)ʃɛʁ(en)\n d\u{200d}ʒ  x \n"),
            "ʃˈɛɹ ʃɛʁ dʒ x"
        );
        assert_eq!(clean("\n\n"), "");
    }

    #[test]
    fn voice_names_are_plain() {
        for ok in ["en-us", "cmn", "en+f3", "fr_fr"] {
            assert!(check_voice(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-w", "en us", "../x", "en;rm"] {
            assert!(check_voice(bad).is_err(), "{bad:?}");
        }
    }
}
