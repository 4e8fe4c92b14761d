# Example pillar for the sample project `rainbow` (see docs/pillar.md).
#
# - deploy.rainbow: the project definition. Targeted at every minion AND the master: the
#   runner reads it from the pillar compiled for the master's own id (salt-run's id is
#   `<master id>_master` unless `id` is set in the master config), like state.orchestrate.
# - deploy.rainbow_secrets: secrets, targeted at the nodes only (never the master, so the
#   runner never sees them).
# - deploy.rainbow_job: the job node's own differences (its crontab.xml).
# - deploy.rainbow_notify: the webhooks, whose addresses hold tokens: the master's own id only
#   (here a master whose id is `salt`: salt-run compiles the pillar for `salt_master`).
base:
  '*':
    - deploy.rainbow
  'G@roles:rainbow':
    - match: compound
    - deploy.rainbow_secrets
  'web-3':
    - deploy.rainbow_job
  'salt_master':
    - deploy.rainbow_notify
