//! The build script of every guest binary (each guest's `Cargo.toml` names it): links the
//! guest with guest-rt's linker script (published by guest-rt's build script as
//! `DEP_GUEST_RT_LD`), for the guest target only.
fn main() {
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let script =
            std::env::var("DEP_GUEST_RT_LD").expect("guest-rt publishes its linker script");
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
        println!("cargo:rerun-if-changed={script}");
    }
    println!("cargo:rerun-if-changed=../link.rs");
}
