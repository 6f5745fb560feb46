//! Prints the KeepalivePolicy CRD as YAML; `crds/keepalivepolicy.yaml` is
//! its output (a test fails when the committed file is stale).

fn main() -> anyhow::Result<()> {
    print!("{}", goaway_operator::crd::manifest()?);
    Ok(())
}
