#![forbid(unsafe_code)]
fn main() -> anyhow::Result<()> {
    anyhow::bail!("handoff: not implemented yet")
}
