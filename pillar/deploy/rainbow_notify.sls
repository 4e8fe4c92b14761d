# Webhooks told of a run's events (docs/notifications.md).  Their addresses often hold a token:
# this file is targeted at the master's own id only (see top.sls), never at the nodes, whose
# pillar a compromised node could read.  Salt merges it into deploy:projects:rainbow.
deploy:
  projects:
    rainbow:
      notify:
        - url: https://hooks.slack.com/services/T000/B000/XXXX
          format: slack
          events: [failure, rollback]
        - url: https://ci.example.com/hooks/deploy
