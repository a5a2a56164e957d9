#!/bin/sh
# Builds the Pulumi engine dcforge drives (`make pulumi-tools`): the CLI and the Kubernetes
# resource provider, from the Go module versions pinned in tools/pulumi/*/go.mod + go.sum, into
# $DCFORGE_PULUMI_HOME (default ~/.cache/dcforge-pulumi), outside git. A second run whose pins
# are unchanged reuses the cache. The Python language host is not built: dcforge runs the stack
# as an Automation API inline program, whose language host is the pulumi Python package itself,
# and hands the engine the policy pack as an executable (stacks/policy/analyzer).
# Go builds run at the lowest priority on one job (-p 1): the machine is shared.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
home=${DCFORGE_PULUMI_HOME:-$HOME/.cache/dcforge-pulumi}
mkdir -p "$home/bin" "$home/src"
pin() { sed -n "s|^	$1 \(v[^ ]*\).*|\1|p" "$2" | head -n 1; }
cli_version=$(pin 'github.com/pulumi/pulumi/pkg/v3' "$here/cli/go.mod")
provider_version=$(pin 'github.com/pulumi/pulumi-kubernetes/provider/v4' "$here/kubernetes/go.mod")
stamp="cli $cli_version provider $provider_version $(cat "$here"/*/go.sum | sha256sum | cut -c1-16)"
if [ -x "$home/bin/pulumi" ] && [ -x "$home/bin/pulumi-resource-kubernetes" ] && [ -f "$home/versions" ] \
   && [ "$(cat "$home/stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "pulumi-tools: up to date in $home/bin ($stamp)"; exit 0
fi
build="nice -n 19 go build -p 1 -trimpath"

echo "pulumi-tools: building the Pulumi CLI $cli_version"
(cd "$here/cli" && $build -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$cli_version" \
	-o "$home/bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)

# The provider embeds its schema with the version stamped in, a file its own Makefile generates
# (cmd/pulumi-resource-kubernetes/generate.go): build from a writable copy of the pinned module
# that has it, named by a replace in a copy of our go.mod.
echo "pulumi-tools: building the Kubernetes provider $provider_version"
(cd "$here/kubernetes" && go mod download github.com/pulumi/pulumi-kubernetes/provider/v4)
module=$(cd "$here/kubernetes" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi-kubernetes/provider/v4)
src="$home/src/kubernetes"
rm -rf "$src"; mkdir -p "$src"
cp -R "$module" "$src/provider"; chmod -R u+w "$src/provider"
cp "$here/kubernetes/go.mod" "$here/kubernetes/go.sum" "$src/"
printf '\nreplace github.com/pulumi/pulumi-kubernetes/provider/v4 => ./provider\n' >> "$src/go.mod"
cmd="$src/provider/cmd/pulumi-resource-kubernetes"
VERSION=$provider_version python3 - "$cmd" <<'PY'
import json, os, pathlib, sys
cmd = pathlib.Path(sys.argv[1])
schema = json.loads((cmd / "schema.json").read_text())
schema["version"] = os.environ["VERSION"]
(cmd / "schema-embed.json").write_text(json.dumps(schema))
(cmd / "terraform-mapping-embed.json").write_text(json.dumps(json.loads((cmd / "terraform-mapping.json").read_text())))
PY
(cd "$src" && $build -ldflags "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$provider_version" \
	-o "$home/bin/pulumi-resource-kubernetes" github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes)
rm -rf "$src"
printf 'pulumi=%s\npulumi-resource-kubernetes=%s\ngo=%s\n' "$cli_version" "$provider_version" \
	"$(go env GOVERSION)" > "$home/versions"
echo "$stamp" > "$home/stamp"
echo "pulumi-tools: built into $home/bin ($stamp)"
