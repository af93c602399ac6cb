"""Alibaba's official ApsaraDB for MongoDB SDKs (Tea, both signatures; core SDK)
against a running Stowage. ENDPOINT, AK, SK, INSTANCE (a dds- instance: a MongoDB replica set holding
databases shop and crm), SHARDED (a dds- sharded cluster of two shards, each holding database shop, and
config servers)."""

import json
import os
import time

from alibabacloud_dds20151201 import models as dds
from alibabacloud_dds20151201.client import Client
from alibabacloud_tea_openapi import models as open_api
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions
from links import fetch_tar, link_refused
from aliyunsdkcore.client import AcsClient
from aliyunsdkdds.request.v20151201.DescribeBackupTasksRequest import DescribeBackupTasksRequest

ENDPOINT, AK, SK, INSTANCE = os.environ["ENDPOINT"], os.environ["AK"], os.environ["SK"], os.environ["INSTANCE"]
SHARDED = os.environ["SHARDED"]
RT = RuntimeOptions()

for v2 in (False, True):
    cfg = open_api.Config(access_key_id=AK, access_key_secret=SK, endpoint=ENDPOINT, protocol="HTTP", region_id="cn-hangzhou")
    if v2:
        cfg.signature_algorithm = "v2"
    c = Client(cfg)
    if not v2:
        # A MongoDB instance takes logical backups; asking for another kind is refused.
        try:
            c.create_backup_with_options(dds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_method="Physical"), RT)
            raise AssertionError("physical backup of a logical engine accepted")
        except ClientException as e:
            assert e.code == "InvalidParameter" and e.status_code == 400 and "Logical" in e.message, (e.code, e.message)
    created = c.create_backup_with_options(dds.CreateBackupRequest(
        dbinstance_id=INSTANCE, backup_method="Logical" if v2 else None,
        backup_retention_period=30 if v2 else None), RT).body
    assert created.backup_job_id and created.backup_id, created.to_map()
    job = created.backup_job_id
    seen = []
    while True:
        body = c.describe_backup_tasks_with_options(dds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE, backup_job_id=str(job)), RT).body
        assert body is not None and len(body.backup_jobs) == 1, body
        j = body.backup_jobs[0]
        assert str(j.backupjob_id) == str(job) and j.job_mode == "Manual" and j.backup_start_time, j.to_map()
        seen.append((j.backup_set_status, j.progress))
        if j.backup_set_status in ("Finished", "Failed"):
            break
        time.sleep(0.1)
    assert j.backup_set_status == "Finished", seen
    running = [p for s, p in seen if s == "Backuping"]
    assert all(p.endswith("%") for p in running), seen
    # The first backup dumps every collection: its progress is seen. The
    # second builds on it (the dump reused, only the oplog since read) and
    # may finish between two polls.
    assert running or v2, seen
    body = c.describe_backup_tasks_with_options(dds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE), RT).body
    assert body is not None and body.backup_jobs == [], body
    try:
        c.describe_backup_tasks_with_options(dds.DescribeBackupTasksRequest(dbinstance_id="dds-nosuchinstance0"), RT)
        raise AssertionError("unknown instance accepted")
    except ClientException as e:
        assert e.code == "InvalidDBInstanceId.NotFound" and e.status_code == 404, e.code
    print(f"dds tea {'v2' if v2 else 'ACS3'}: job {job} (set {created.backup_id}) seen {seen}")

c = Client(open_api.Config(access_key_id=AK, access_key_secret=SK, endpoint=ENDPOINT, protocol="HTTP", region_id="cn-hangzhou"))
body = c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT).body
assert body is not None and body.total_count == 2 and body.page_number == 1, body.to_map()
sets = body.backups.backup
assert all(b.backup_status == "Success" and b.backup_size > 1_000_000 and b.backup_mode == "Manual" and b.is_avail
           and b.backup_method == "Logical" and b.backup_dbnames == "crm,shop" and b.engine_version == "8.2"
           for b in sets), body.to_map()
# The replica set's part as a mongodump-layout tar, from the listed link.
url = sets[0].backup_download_url
assert url.startswith(f"http://{ENDPOINT}/v1/downloads/") and sets[0].backup_intranet_download_url == url, sets[0].to_map()
names, disp = fetch_tar(url)
assert "oplog.bson" in names and any(n.startswith("shop/") and n.endswith(".bson") for n in names), names
assert any(n.startswith("crm/") and n.endswith(".metadata.json") for n in names), names
link_refused(url.replace("sig=", "sig=0"))
import datetime
def ts(v):
    return datetime.datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ")
# The v2 round asked for 30 days for its set (newest first), the other got the policy's 7.
assert (ts(sets[0].backup_expire_time) - ts(sets[0].backup_end_time)).days == 30, sets[0].to_map()
assert (ts(sets[1].backup_expire_time) - ts(sets[1].backup_end_time)).days == 7, sets[1].to_map()
by_job = c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=INSTANCE, backup_job_id=sets[1].backup_job_id), RT).body
assert [b.backup_id for b in by_job.backups.backup] == [sets[1].backup_id], by_job.to_map()
c.delete_backup_with_options(dds.DeleteBackupRequest(dbinstance_id=INSTANCE, backup_id=sets[1].backup_id), RT)
left = c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT).body
assert [b.backup_id for b in left.backups.backup] == [sets[0].backup_id], left.to_map()

insts = c.describe_dbinstances_with_options(dds.DescribeDBInstancesRequest(region_id="cn-hangzhou"), RT).body
assert insts is not None and insts.total_count == 2, insts.to_map()
i = [x for x in insts.dbinstances.dbinstance if x.dbinstance_id == INSTANCE][0]
assert i.dbinstance_type == "replicate" and i.dbinstance_status == "Running", i.to_map()
assert i.engine == "MongoDB" and i.engine_version == "8.2", i.to_map()
assert i.shard_list is None, i.to_map()
rs = c.describe_dbinstances_with_options(dds.DescribeDBInstancesRequest(region_id="cn-hangzhou", dbinstance_type="replicate"), RT).body
assert [x.dbinstance_id for x in rs.dbinstances.dbinstance] == [INSTANCE], rs.to_map()

# The sharded cluster: its shards in ShardList; one backup of the whole
# cluster, listed per node (a shard, or the config servers) as the API asks.
sh = c.describe_dbinstances_with_options(dds.DescribeDBInstancesRequest(region_id="cn-hangzhou", dbinstance_type="sharding"), RT).body
assert [x.dbinstance_id for x in sh.dbinstances.dbinstance] == [SHARDED], sh.to_map()
x = sh.dbinstances.dbinstance[0]
assert x.engine == "MongoDB" and x.dbinstance_type == "sharding", x.to_map()
assert [a.node_id for a in x.shard_list.shard_attribute] == [f"{SHARDED}_0", f"{SHARDED}_1"], x.to_map()
job = c.create_backup_with_options(dds.CreateBackupRequest(dbinstance_id=SHARDED), RT).body.backup_job_id
while True:
    j = c.describe_backup_tasks_with_options(dds.DescribeBackupTasksRequest(dbinstance_id=SHARDED, backup_job_id=str(job)), RT).body.backup_jobs[0]
    if j.backup_set_status in ("Finished", "Failed"):
        break
    time.sleep(0.1)
assert j.backup_set_status == "Finished", j.to_map()
try:
    c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=SHARDED), RT)
    raise AssertionError("a sharded instance's backups listed without NodeId")
except ClientException as e:
    assert e.code == "MissingParameter" and "NodeId" in e.message, (e.code, e.message)
try:
    c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=SHARDED, node_id="d-nosuch"), RT)
    raise AssertionError("an unknown node accepted")
except ClientException as e:
    assert e.code == "InvalidParameter" and "NodeId" in e.message, (e.code, e.message)
for node, dbs in ((f"{SHARDED}_0", "shop"), (f"{SHARDED}_1", "shop"), (f"{SHARDED}_config", "config")):
    b = c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=SHARDED, node_id=node), RT).body
    assert b.total_count == 1 and str(b.backups.backup[0].backup_job_id) == str(job), b.to_map()
    one = b.backups.backup[0]
    assert one.backup_dbnames == dbs and one.backup_size > 0 and one.backup_method == "Logical", (node, one.to_map())
    # Each node's own part, by its link.
    names, disp = fetch_tar(one.backup_download_url)
    assert disp == f'attachment; filename="{node}.tar"' and "oplog.bson" in names, (node, disp, names)
    assert any(n.startswith(dbs + "/") for n in names), (node, names)
sizes = [c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=SHARDED, node_id=f"{SHARDED}_{k}"), RT)
         .body.backups.backup[0].backup_size for k in (0, 1)]
assert sizes[0] > sizes[1], sizes  # shard 0 holds more
try:
    c.describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=INSTANCE, node_id=f"{SHARDED}_0"), RT)
    raise AssertionError("NodeId accepted for a replica set")
except ClientException as e:
    assert e.code == "InvalidParameter", e.code
print("dds tea: sharded cluster (ShardList, per-node DescribeBackups) ok")

tagged = c.describe_dbinstances_with_options(dds.DescribeDBInstancesRequest(
    region_id="cn-hangzhou", tag=[dds.DescribeDBInstancesRequestTag(key="env", value="prod")]), RT).body
assert tagged.total_count == 0 and tagged.dbinstances.dbinstance == [], tagged.to_map()
pol = c.describe_backup_policy_with_options(dds.DescribeBackupPolicyRequest(dbinstance_id=INSTANCE), RT).body
assert pol is not None and pol.backup_retention_period == "7" and pol.preferred_backup_time == "02:00Z-03:00Z", pol.to_map()
c.modify_backup_policy_with_options(dds.ModifyBackupPolicyRequest(
    dbinstance_id=INSTANCE, preferred_backup_time="21:00Z-22:00Z", preferred_backup_period="Saturday,Sunday",
    backup_retention_period=30, enable_backup_log=1, log_backup_retention_period=14), RT)
pol = c.describe_backup_policy_with_options(dds.DescribeBackupPolicyRequest(dbinstance_id=INSTANCE), RT).body
assert (pol.preferred_backup_time, pol.preferred_backup_period, pol.backup_retention_period) == (
    "21:00Z-22:00Z", "Saturday,Sunday", "30"), pol.to_map()
assert pol.enable_backup_log == 1 and pol.log_backup_retention_period == 14, pol.to_map()
try:
    c.modify_backup_policy_with_options(dds.ModifyBackupPolicyRequest(dbinstance_id=INSTANCE, preferred_backup_time="21-22"), RT)
    raise AssertionError("bad window accepted")
except ClientException as e:
    assert e.code == "InvalidParameter" and e.status_code == 400, e.code
print("dds tea: DescribeBackups/DeleteBackup/DescribeDBInstances/BackupPolicy ok")

req = DescribeBackupTasksRequest()
req.set_DBInstanceId(INSTANCE)
req.set_endpoint("127.0.0.1")
req.set_protocol_type("http")
body = json.loads(AcsClient(AK, SK, "cn-hangzhou", port=int(ENDPOINT.rsplit(":", 1)[1])).do_action_with_exception(req))
assert body["BackupJobs"] == [], body
print("all dds SDK checks passed")
