# Secrets: targeted at the nodes only (see top.sls), rendered into config files that are
# mode 0640 and owned by the project user.  Never put them in deploy:projects (the
# master reads that).
#
# In production keep them encrypted with Salt's GPG renderer: make this file start with
#   #!yaml|gpg
# and paste the armored values, e.g.
#   rainbow_secrets:
#     sms_key: |
#       -----BEGIN PGP MESSAGE-----
#       hQEMA...
#       -----END PGP MESSAGE-----
# (encrypt with: echo -n 'value' | gpg --armor --batch --trust-model always --encrypt -r deploy@example.com)
rainbow_secrets:
  sms_key: example-sms-key-change-me
  pay_key: example-pay-key-change-me
