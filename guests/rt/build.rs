//! Publishes the guest linker script's path to the build script of the guest binaries
//! (`guests/link.rs`, which they share): they read it as `DEP_GUEST_RT_LD` and pass `-T<path>`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:ld={dir}/guest.ld");
    println!("cargo:rerun-if-changed={dir}/guest.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
