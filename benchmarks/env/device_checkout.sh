# Sourced by the GPU benchmarks that clone the checkout to run `dvc exp run` in the clone
# (learning/learning.sh, hub_checkpoints/hub_checkpoints.sh). On the device machine of this
# workplace the checkout's .git holds the session's first commit while its files are the newest
# ones sent: a plain `git clone .` would run the old commit. This commits the sent tree first (a
# checkout without changes is left alone). Needs the GIT_AUTHOR_* / GIT_COMMITTER_* variables set.
if [ -n "$(git status --porcelain)" ]; then
  git add -A && git commit --quiet -m "benchmark: the tree sent to this machine" || return 1
fi
echo "benchmark checkout: $(git log --oneline -1)"
