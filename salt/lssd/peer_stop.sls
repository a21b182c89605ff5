{#- Stop every lingering (or still downloading) peer on the targeted minions
    (ansible-lssd's stop_all_peers.yml). Peers also stop by themselves lssd:linger seconds
    after their download. Reports a change only where a peer was running.

        salt 'web*' state.apply lssd.peer_stop
-#}

lssd-peers-stopped:
  lssd.peer_stopped:
    - name: all
