# Runs in the tools image (bash); the files of demo/payload are the working directory.
set -euo pipefail
echo "building release $RELEASE from $(ls | wc -l) file(s): $(ls | tr '\n' ' ')"
mkdir -p out
tar -czf "out/app-$RELEASE.tar.gz" app.conf VERSION
sha=$(sha256sum "out/app-$RELEASE.tar.gz" | cut -c1-12)
echo "package out/app-$RELEASE.tar.gz sha256 $sha"
set_sshexec_variable Artifact "app-$RELEASE.tar.gz"
set_sshexec_variable Checksum "$sha"
new_sshexec_artifact "out/app-$RELEASE.tar.gz"
