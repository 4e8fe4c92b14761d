{#- salt-deploy: post a deploy event to the project's webhooks (README "Notifications").
    Map deploy/*/*/{start,pause,success,failure,rollback} here in the master's reactor config. #}
deploy_notify:
  runner.deploy_notify.send:
    - args:
      - tag: {{ tag | json }}
      - data: {{ data | json }}
