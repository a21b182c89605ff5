{#- Stop every lingering (or still downloading) peer on the targeted minions
    (ansible-lssd's stop_all_peers.yml). Peers also stop by themselves lssd:linger seconds
    after their download.

        salt 'web*' state.apply lssd.peer_stop
-#}
{%- set peers = salt["lssd.status"]()["processes"]
      | selectattr("role", "equalto", "peer") | selectattr("running") | map(attribute="tag") | list %}

{%- if peers %}
lssd-peers-stopped:
  module.run:
    - lssd.peer_stop: []
{%- else %}
lssd-peers-stopped:
  test.succeed_without_changes:
    - name: No lssd peer is running
{%- endif %}
