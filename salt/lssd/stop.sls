{#- Stop seeding every tag and stop the tracker (ansible-lssd's stop_seeder_and_tracker.yml).
    Each is a no-op where it does not run, so one target can cover both roles:

        salt -C 'tracker01 or build01' state.apply lssd.stop
-#}

lssd-seeding-stopped:
  lssd.seeding_stopped:
    - name: all

lssd-tracker-stopped:
  lssd.tracker_stopped:
    - name: lssd-tracker
