//! `--prompt-cache FILE`: restore the state saved in FILE, evaluate only the part of the prompt it does
//! not hold, and save the state after the prompt (llama.cpp's prompt cache).
use crate::Failure;
use edge_run::{Sampler, Session};
use std::path::Path;

/// Brings `sess` (new) to the end of the prompt `ids`, reusing what FILE holds, and leaves the prompt
/// in the sampler's history. Saves the state to FILE when anything was evaluated.
pub(crate) fn evaluate(
    sess: &mut Session,
    sampler: &mut Sampler,
    ids: &[u32],
    file: &Path,
    quiet: bool,
) -> Result<(), Failure> {
    let t0 = std::time::Instant::now();
    let reused = restore(sess, file, ids)?;
    eprintln!(
        "edge-run: prompt cache {}: reused {reused} of {} prompt tokens ({:.1} ms)",
        file.display(),
        ids.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    for &t in ids {
        sampler.accept(t);
    }
    if reused < ids.len() {
        let t0 = std::time::Instant::now();
        sess.eval(&ids[reused..])?;
        if !quiet {
            eprintln!(
                "edge-run: evaluated {} prompt tokens in {:.0} ms",
                ids.len() - reused,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        let t0 = std::time::Instant::now();
        save(sess, file)?;
        if !quiet {
            eprintln!(
                "edge-run: prompt cache {}: saved {} tokens in {:.1} ms",
                file.display(),
                sess.n_past(),
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

/// Restores FILE if it exists and keeps the longest common prefix of its tokens and `ids`: all of
/// them if they are the prompt and the file has its logits, else at most `ids.len() - 1` (the last
/// prompt token is evaluated for its logits). Returns how many prompt tokens the session holds.
fn restore(sess: &mut Session, file: &Path, ids: &[u32]) -> Result<usize, Failure> {
    if !file.exists() {
        return Ok(0);
    }
    sess.load_state(file)?;
    let common = sess
        .tokens()
        .iter()
        .zip(ids)
        .take_while(|(a, b)| a == b)
        .count();
    if common == ids.len() && sess.n_past() == ids.len() && sess.last_logits().is_some() {
        return Ok(common);
    }
    let keep = common.min(ids.len().saturating_sub(1));
    sess.truncate(keep);
    Ok(keep)
}

/// Saves the state to FILE.tmp, then renames it to FILE: FILE is never left half written.
pub(crate) fn save(sess: &mut Session, file: &Path) -> Result<(), Failure> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    sess.save_state(&tmp)?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure(
            1,
            format!(
                "{}: cannot replace it with {}: {e}",
                file.display(),
                tmp.display()
            ),
        )
    })
}
