"""Alibaba's official PolarDB SDKs (Tea, both signatures; core SDK) against a
running Stowage. ENDPOINT, AK, SK, CLUSTER (a pc- instance) from the
environment; run by crates/cli/tests/e2e/sdk.rs."""

import json
import os
import time

from alibabacloud_polardb20170801 import models as pdb
from alibabacloud_polardb20170801.client import Client
from alibabacloud_tea_openapi import models as open_api
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions
from links import fetch_tar, link_refused
from aliyunsdkcore.client import AcsClient
from aliyunsdkpolardb.request.v20170801.DescribeBackupTasksRequest import DescribeBackupTasksRequest
from aliyunsdkpolardb.request.v20170801.DescribeBackupsRequest import DescribeBackupsRequest

ENDPOINT, AK, SK, CLUSTER = os.environ["ENDPOINT"], os.environ["AK"], os.environ["SK"], os.environ["CLUSTER"]
RT = RuntimeOptions()


def tea(v2):
    cfg = open_api.Config(access_key_id=AK, access_key_secret=SK, endpoint=ENDPOINT, protocol="HTTP", region_id="cn-hangzhou")
    if v2:
        cfg.signature_algorithm = "v2"
    return Client(cfg)


def tea_error(call, code, status):
    try:
        call()
    except ClientException as e:
        assert e.code == code and e.status_code == status, (e.code, e.status_code, e.message)
        return
    raise AssertionError(f"expected {code}")


for v2 in (False, True):
    c = tea(v2)
    job = c.create_backup_with_options(pdb.CreateBackupRequest(dbcluster_id=CLUSTER, comment=f"nightly {'v2' if v2 else 'acs3'}"), RT).body.backup_job_id
    assert job
    seen = []
    while True:
        body = c.describe_backup_tasks_with_options(pdb.DescribeBackupTasksRequest(dbcluster_id=CLUSTER, backup_job_id=str(job)), RT).body
        assert body is not None and len(body.items.backup_job) == 1, body
        j = body.items.backup_job[0]
        assert j.start_time and j.job_mode == "Manual" and j.task_action == "TempBackupTask", j.to_map()
        seen.append((j.backup_progress_status, int(j.process)))
        if j.backup_progress_status == "Finished":
            break
        time.sleep(0.1)
    assert int(j.process) == 100, seen
    assert [p for _, p in seen] == sorted(p for _, p in seen), seen
    body = c.describe_backup_tasks_with_options(pdb.DescribeBackupTasksRequest(dbcluster_id=CLUSTER), RT).body
    assert body.items.backup_job == [], body.to_map()
    tea_error(lambda: c.describe_backup_tasks_with_options(
        pdb.DescribeBackupTasksRequest(dbcluster_id="pc-nosuchcluster000"), RT), "InvalidDBClusterId.NotFound", 400)
    tea_error(lambda: c.describe_backup_tasks_with_options(
        pdb.DescribeBackupTasksRequest(dbcluster_id=CLUSTER, backup_mode="Weekly"), RT), "InvalidBackupMode.Malformed", 400)
    print(f"polardb tea {'v2' if v2 else 'ACS3'}: job {job} progress {[p for _, p in seen]}")

# Sets: list, filter, page, delete; clusters; backup policy.
c = tea(False)
body = c.describe_backups_with_options(pdb.DescribeBackupsRequest(dbcluster_id=CLUSTER), RT).body
assert body is not None and body.total_record_count == "2", body.to_map()
sets = body.items.backup
assert all(b.backup_status == "Success" and b.dbcluster_id == CLUSTER and int(b.backup_set_size) > 1_000_000
           for b in sets), body.to_map()
assert all(b.backup_mode == "Manual" and b.expect_expire_time for b in sets), body.to_map()
assert [b.comment for b in sets] == ["nightly v2", "nightly acs3"], body.to_map()
only = c.describe_backups_with_options(pdb.DescribeBackupsRequest(dbcluster_id=CLUSTER, backup_id=sets[0].backup_id), RT).body
assert [b.backup_id for b in only.items.backup] == [sets[0].backup_id], only.to_map()
tea_error(lambda: c.describe_backups_with_options(
    pdb.DescribeBackupsRequest(dbcluster_id=CLUSTER, backup_mode="Weekly"), RT), "InvalidParameter", 400)
tea_error(lambda: c.delete_backup_with_options(
    pdb.DeleteBackupRequest(dbcluster_id=CLUSTER, backup_id="999999"), RT), "InvalidBackupId.NotFound", 404)
c.delete_backup_with_options(pdb.DeleteBackupRequest(dbcluster_id=CLUSTER, backup_id=sets[1].backup_id), RT)
left = c.describe_backups_with_options(pdb.DescribeBackupsRequest(dbcluster_id=CLUSTER), RT).body
assert [b.backup_id for b in left.items.backup] == [sets[0].backup_id], left.to_map()

cl = c.describe_dbclusters_with_options(pdb.DescribeDBClustersRequest(region_id="cn-hangzhou"), RT).body
assert cl is not None and cl.total_record_count == 1, cl.to_map()
assert cl.items.dbcluster[0].dbcluster_id == CLUSTER and cl.items.dbcluster[0].dbcluster_status == "Running", cl.to_map()
assert cl.items.dbcluster[0].dbversion == "15", cl.to_map()
none = c.describe_dbclusters_with_options(pdb.DescribeDBClustersRequest(region_id="cn-hangzhou", dbcluster_ids="pc-other"), RT).body
assert none.items.dbcluster == [], none.to_map()

for flt, n in ((dict(dbtype="PostgreSQL"), 1), (dict(dbtype="MySQL"), 0), (dict(dbnode_ids="pi-none"), 0),
               (dict(recent_creation_interval=1), 1), (dict(dbcluster_description="clus"), 1)):
    got = c.describe_dbclusters_with_options(pdb.DescribeDBClustersRequest(region_id="cn-hangzhou", **flt), RT).body
    assert got.total_record_count == n, (flt, got.to_map())
pol = c.describe_backup_policy_with_options(pdb.DescribeBackupPolicyRequest(dbcluster_id=CLUSTER), RT).body
assert pol is not None and pol.data_level_1backup_retention_period == "7", pol.to_map()
c.modify_backup_policy_with_options(pdb.ModifyBackupPolicyRequest(
    dbcluster_id=CLUSTER, preferred_backup_time="15:00Z-16:00Z", preferred_backup_period="Monday,Friday",
    data_level_1backup_retention_period="5", backup_retention_policy_on_cluster_deletion="ALL"), RT)
pol = c.describe_backup_policy_with_options(pdb.DescribeBackupPolicyRequest(dbcluster_id=CLUSTER), RT).body
assert (pol.preferred_backup_time, pol.preferred_backup_period, pol.data_level_1backup_retention_period) == (
    "15:00Z-16:00Z", "Monday,Friday", "5"), pol.to_map()
assert pol.backup_retention_policy_on_cluster_deletion == "ALL", pol.to_map()
tea_error(lambda: c.modify_backup_policy_with_options(pdb.ModifyBackupPolicyRequest(
    dbcluster_id=CLUSTER, data_level_1backup_retention_period="30"), RT), "InvalidParameter", 400)
tea_error(lambda: c.describe_backup_policy_with_options(
    pdb.DescribeBackupPolicyRequest(dbcluster_id="pc-nosuchcluster000"), RT), "InvalidDBClusterId.NotFound", 400)
print("polardb tea: DescribeBackups/DeleteBackup/DescribeDBClusters/BackupPolicy ok")

req = DescribeBackupTasksRequest()
req.set_DBClusterId(CLUSTER)
req.set_endpoint("127.0.0.1")
req.set_protocol_type("http")
body = json.loads(AcsClient(AK, SK, "cn-hangzhou", port=int(ENDPOINT.rsplit(":", 1)[1])).do_action_with_exception(req))
assert body["Items"]["BackupJob"] == [] and body["RequestId"], body
# PolarDB's model has no download URL; the JSON carries the same links as
# rds and dds for clients that read it (the core SDK returns it raw).
req = DescribeBackupsRequest()
req.set_DBClusterId(CLUSTER)
req.set_endpoint("127.0.0.1")
req.set_protocol_type("http")
body = json.loads(AcsClient(AK, SK, "cn-hangzhou", port=int(ENDPOINT.rsplit(":", 1)[1])).do_action_with_exception(req))
b = body["Items"]["Backup"][0]
names, disp = fetch_tar(b["BackupDownloadURL"])
assert any(n.endswith("PG_VERSION") for n in names) and disp == 'attachment; filename="base.tar"', (disp, names[:20])
print("all polardb SDK checks passed")
