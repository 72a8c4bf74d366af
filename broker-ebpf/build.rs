/// Building this crate needs the `bpf-linker` binary, a dependency cargo cannot
/// express; rebuild when it changes (`cargo xtask setup` installs it).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker is not on PATH: run `cargo xtask setup`"),
    }
}
