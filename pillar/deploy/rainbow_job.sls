# The job node runs the scheduled jobs: its crontab.xml differs from the other nodes'.
# Merged into deploy:projects:rainbow by Salt's pillar merging.
deploy:
  projects:
    rainbow:
      files:
        config/crontab.xml:
          mode: '0644'
          contents: |
            <?xml version="1.0" encoding="UTF-8"?>
            <crontab>
              <job name="daily-report" schedule="0 3 * * *" command="php artisan report:daily"/>
              <job name="cleanup-sessions" schedule="*/30 * * * *" command="php artisan sessions:gc"/>
            </crontab>
