{#- An operator's hook as the tests use it (pillar lssd:hooks:sls): it records each run, one
    line with the tag, in hooks.log beside the peer's destination_path. -#}
lssd-test-hook:
  cmd.run:
    - name: echo {{ pillar["lssd"]["tag"] }} >> {{ pillar["lssd"]["destination_path"] }}/../hooks.log
