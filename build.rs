//! Records the commit the binaries are built from, for `--version`: a fleet
//! that mixes this implementation with the Python original must be able to
//! tell which build runs where.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BWR_BUILD_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it
    // names (a commit), wherever a worktree keeps them.
    println!("cargo:rerun-if-changed=build.rs");
    if let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        let mut watched = vec![PathBuf::from(&git_dir).join("HEAD")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(PathBuf::from(&common_dir).join(branch));
        }
        watched.push(PathBuf::from(&common_dir).join("packed-refs"));
        // A watched path that does not exist would rerun this script (and
        // rebuild the crate) on every build.
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
