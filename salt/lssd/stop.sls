{#- Stop seeding and stop the tracker (ansible-lssd's stop_seeder_and_tracker.yml). Each is a
    no-op where it does not run, so one target can cover both roles:

        salt -C 'tracker01 or build01' state.apply lssd.stop

    With lssd:tag set (the orchestrate always sets it in the run's pillar) only that tag
    stops seeding, in the app namespace lssd:app: another run seeding another tag from the
    same seeder goes on. Without a tag, every tag of the namespace stops.
-#}
{%- from "lssd/map.jinja" import lssd with context %}
{%- set tag = lssd.get("tag") %}

lssd-seeding-stopped:
  lssd.seeding_stopped:
    - name: {{ ("all" if tag in (none, "") else tag)|json }}

lssd-tracker-stopped:
  lssd.tracker_stopped:
    - name: lssd-tracker
