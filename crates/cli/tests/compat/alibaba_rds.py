"""Alibaba's official rds SDKs (Tea, both signatures; and the older core SDK)
against a running Stowage. Run by crates/cli/tests/e2e/sdk.rs with:
ENDPOINT=127.0.0.1:PORT AK=... SK=... INSTANCE=rm-... OTHER=rm-... (an instance
of another account). Every assertion is on a parsed body: a wrong container
would give body None silently (spec section 8)."""

import json
import os
import sys
import time

from alibabacloud_rds20140815 import models as rds
from alibabacloud_rds20140815.client import Client
from alibabacloud_tea_openapi import models as open_api
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions
from links import fetch_tar, link_refused
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkrds.request.v20140815.CreateBackupRequest import CreateBackupRequest
from aliyunsdkrds.request.v20140815.DescribeBackupTasksRequest import DescribeBackupTasksRequest

ENDPOINT, AK, SK = os.environ["ENDPOINT"], os.environ["AK"], os.environ["SK"]
INSTANCE, OTHER = os.environ["INSTANCE"], os.environ["OTHER"]
RT = RuntimeOptions()


def tea(v2, secret=SK):
    cfg = open_api.Config(access_key_id=AK, access_key_secret=secret, endpoint=ENDPOINT,
                          protocol="HTTP", region_id="cn-hangzhou")
    if v2:
        cfg.signature_algorithm = "v2"
    return Client(cfg)


def tea_backup(c, label):
    job = c.create_backup_with_options(
        rds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_method="Physical"), RT).body.backup_job_id
    assert job, "no BackupJobId"
    seen = []
    # While it runs, the default listing shows it (only unfinished tasks are listed).
    listed = c.describe_backup_tasks_with_options(rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE), RT).body
    assert listed is not None
    assert [str(j.backup_job_id) for j in listed.items.backup_job] == [str(job)], listed.to_map()
    while True:
        body = c.describe_backup_tasks_with_options(
            rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE, backup_job_id=int(job)), RT).body
        assert body is not None and len(body.items.backup_job) == 1, body
        j = body.items.backup_job[0]
        seen.append((j.backup_status, int(j.process)))
        if j.backup_status in ("Finished", "Failed"):
            break
        time.sleep(0.1)
    assert j.backup_status == "Finished" and j.backup_progress_status == "Finished", seen
    assert j.backup_id and j.job_mode == "Manual" and j.task_action == "TempBackupTask", j.to_map()
    percents = [p for _, p in seen]
    assert percents == sorted(percents), seen
    assert any(0 < p < 100 for p in percents), f"{label}: progress never seen rising: {seen}"
    assert any(s == "Uploading" for s, _ in seen), seen
    # Finished: no longer in the default listing, still there by id.
    body = c.describe_backup_tasks_with_options(rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE), RT).body
    assert body.items.backup_job == [], body.to_map()
    body = c.describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE, backup_job_status="Progressing", backup_mode="Manual"), RT).body
    assert body.items.backup_job == []
    print(f"{label}: backup job {job} -> set {j.backup_id}, progress seen {percents}")
    return job


def tea_error(call, code, status):
    try:
        call()
    except ClientException as e:
        assert e.code == code and e.status_code == status, (e.code, e.status_code, e.message)
        assert e.request_id, "error without request id"
        return
    raise AssertionError(f"expected {code}")


for v2 in (False, True):
    label = "tea v2 (RPC HMAC-SHA1)" if v2 else "tea ACS3-HMAC-SHA256"
    c = tea(v2)
    tea_backup(c, label)
    tea_error(lambda: c.describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id="rm-nosuchinstance00"), RT), "InvalidDBInstanceId.NotFound", 404)
    # Another account's instance looks exactly like a missing one.
    tea_error(lambda: c.describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id=OTHER), RT), "InvalidDBInstanceId.NotFound", 404)
    tea_error(lambda: c.describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE, backup_mode="Sometimes"), RT), "InvalidParameter", 400)
    tea_error(lambda: c.create_backup_with_options(
        rds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_retention_period=3), RT), "InvalidParameter", 400)
    tea_error(lambda: c.create_backup_with_options(
        rds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_strategy="db", dbname="app"), RT), "InvalidParameter", 400)
    tea_error(lambda: tea(v2, "wrong").describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE), RT), "SignatureDoesNotMatch", 400)

# Backup sets: list, filter, page, delete.
c = tea(False)
body = c.describe_backups_with_options(rds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT).body
assert body is not None and body.total_record_count == "2", body.to_map()
sets = body.items.backup
assert len(sets) == 2 and all(b.backup_status == "Success" and b.backup_method == "Physical" for b in sets), body.to_map()
assert all(b.dbinstance_id == INSTANCE and b.backup_size > 1_000_000 and b.engine == "PostgreSQL" for b in sets)
# Each set's download link, made on demand: the base-backup tar, streamed
# while it is packaged; a changed link is refused.
url = sets[0].backup_download_url
assert url.startswith(f"http://{ENDPOINT}/v1/downloads/sets/") and sets[0].backup_intranet_download_url == url, sets[0].to_map()
names, disp = fetch_tar(url)
assert any(n.endswith("PG_VERSION") for n in names) and any(n.endswith("global/pg_control") for n in names), names[:30]
assert disp == 'attachment; filename="base.tar"', disp
link_refused(url.replace("sig=", "sig=0"))
link_refused(url.replace(f"/{sets[0].backup_id}/", f"/{sets[1].backup_id}/"))
import urllib.request
head = urllib.request.urlopen(urllib.request.Request(url, method="HEAD"))
assert head.status == 200 and head.read() == b"" and head.headers["Content-Disposition"] == 'attachment; filename="base.tar"', dict(head.headers)
first = c.describe_backups_with_options(rds.DescribeBackupsRequest(dbinstance_id=INSTANCE, page_size=1, page_number=2), RT).body
assert first.page_record_count == "1" and first.items.backup[0].backup_id == sets[1].backup_id, first.to_map()
none = c.describe_backups_with_options(
    rds.DescribeBackupsRequest(dbinstance_id=INSTANCE, start_time="2000-01-01T00:00Z", end_time="2000-01-02T00:00Z"), RT).body
assert none.items.backup == [] and none.total_record_count == "0", none.to_map()
tea_error(lambda: c.describe_backups_with_options(
    rds.DescribeBackupsRequest(dbinstance_id=INSTANCE, start_time="yesterday"), RT), "InvalidParameter", 400)
tea_error(lambda: c.delete_backup_with_options(
    rds.DeleteBackupRequest(dbinstance_id=INSTANCE, backup_id="999999"), RT), "InvalidBackupId.NotFound", 404)
c.delete_backup_with_options(rds.DeleteBackupRequest(dbinstance_id=INSTANCE, backup_id=sets[1].backup_id), RT)
left = c.describe_backups_with_options(rds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT).body
assert [b.backup_id for b in left.items.backup] == [sets[0].backup_id], left.to_map()
print(f"tea: DescribeBackups/DeleteBackup ok; {len(left.items.backup)} set left")

insts = c.describe_dbinstances_with_options(rds.DescribeDBInstancesRequest(region_id="cn-hangzhou"), RT).body
assert insts is not None and insts.total_record_count == 1, insts.to_map()
i = insts.items.dbinstance[0]
assert i.dbinstance_id == INSTANCE and i.engine == "PostgreSQL" and i.engine_version == "15", i.to_map()
assert i.dbinstance_status == "Running" and i.dbinstance_description == "sdk", i.to_map()
none = c.describe_dbinstances_with_options(rds.DescribeDBInstancesRequest(region_id="cn-hangzhou", engine="MySQL"), RT).body
assert none.items.dbinstance == [], none.to_map()
for flt, n in ((dict(vpc_id="vpc-1"), 0), (dict(search_key="sd"), 1), (dict(search_key="zz"), 0),
               (dict(dbinstance_status="Running", engine_version="15"), 1), (dict(dbinstance_status="Stopped"), 0),
               (dict(expired="True"), 0)):
    got = c.describe_dbinstances_with_options(rds.DescribeDBInstancesRequest(region_id="cn-hangzhou", **flt), RT).body
    assert got.total_record_count == n and len(got.items.dbinstance) == n, (flt, got.to_map())
print("tea: DescribeDBInstances ok")

# Backup policy: the default, a change, the change read back, bad values.
for v2 in (False, True):
    c = tea(v2)
    pol = c.describe_backup_policy_with_options(rds.DescribeBackupPolicyRequest(dbinstance_id=INSTANCE), RT).body
    assert pol is not None and pol.backup_retention_period in (7, 9), pol.to_map()
    assert pol.preferred_backup_time and pol.preferred_backup_period and pol.preferred_next_backup_time, pol.to_map()
    assert pol.advanced_data_policies.advanced_data_policy == [], pol.to_map()
    mod = c.modify_backup_policy_with_options(rds.ModifyBackupPolicyRequest(
        dbinstance_id=INSTANCE, preferred_backup_time="19:00Z-20:00Z", preferred_backup_period="Monday,Thursday",
        backup_retention_period="9", compress_type="4", enable_increment_data_backup=True,
        local_log_retention_hours="24"), RT).body
    assert mod is not None and mod.dbinstance_id == INSTANCE and mod.compress_type == "4", mod.to_map()
    assert mod.local_log_retention_hours == 24 and mod.enable_increment_data_backup is True, mod.to_map()
    pol = c.describe_backup_policy_with_options(rds.DescribeBackupPolicyRequest(dbinstance_id=INSTANCE), RT).body
    assert (pol.preferred_backup_time, pol.preferred_backup_period, pol.backup_retention_period) == (
        "19:00Z-20:00Z", "Monday,Thursday", 9), pol.to_map()
    assert pol.compress_type == "4" and pol.local_log_retention_hours == 24, pol.to_map()
    # The next window's start; while the window is open (a Monday or
    # Thursday between 19:00 and 20:00 UTC) the backup is due now.
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    if now.strftime("%A") in ("Monday", "Thursday") and now.hour == 19:
        assert pol.preferred_next_backup_time.startswith(now.strftime("%Y-%m-%dT19:")), pol.to_map()
    else:
        assert pol.preferred_next_backup_time.endswith("T19:00Z"), pol.to_map()
    for bad in (dict(preferred_backup_time="7pm"), dict(preferred_backup_period="Someday"),
                dict(backup_retention_period="3"), dict(backup_priority=None, inc_backup_interval=None,
                                                        backup_policy_mode="Sometimes")):
        tea_error(lambda: c.modify_backup_policy_with_options(
            rds.ModifyBackupPolicyRequest(dbinstance_id=INSTANCE, **bad), RT), "InvalidParameter", 400)
    tea_error(lambda: c.describe_backup_policy_with_options(
        rds.DescribeBackupPolicyRequest(dbinstance_id=OTHER), RT), "InvalidDBInstanceId.NotFound", 404)
print("tea: Describe/ModifyBackupPolicy ok")

# A key limited by a RAM policy to DescribeBackupTasks.
for v2 in (False, True):
    cfg = open_api.Config(access_key_id=os.environ["LIMITED_AK"], access_key_secret=os.environ["LIMITED_SK"],
                          endpoint=ENDPOINT, protocol="HTTP", region_id="cn-hangzhou")
    if v2:
        cfg.signature_algorithm = "v2"
    lim = Client(cfg)
    assert lim.describe_backup_tasks_with_options(rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE), RT).body is not None
    try:
        lim.describe_backups_with_options(rds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT)
        raise AssertionError("limited key listed sets")
    except ClientException as e:
        assert e.code == "Forbidden.RAM" and e.status_code == 403, (e.code, e.status_code)
        d = e.access_denied_detail
        assert d and d["AuthAction"] == "rds:DescribeBackups" and d["NoPermissionType"] == "ImplicitDeny", d
print("tea: RAM policy (Forbidden.RAM with AccessDeniedDetail) ok")

# The remaining error codes through the Tea SDK's typed exceptions.
from alibabacloud_tea_openapi import utils_models as oa_util
from alibabacloud_tea_openapi.exceptions import ThrottlingException

for v2 in (False, True):
    c = tea(v2)
    tea_error(lambda: c.describe_backup_tasks_with_options(rds.DescribeBackupTasksRequest(), RT), "MissingParameter", 400)
    params = oa_util.Params(action="DescribeNothing", version="2014-08-15", protocol="HTTP", pathname="/",
                            method="POST", auth_type="AK", style="RPC", req_body_type="formData", body_type="json")
    tea_error(lambda: c.call_api(params, oa_util.OpenApiRequest(query={"DBInstanceId": INSTANCE}), RT),
              "InvalidAction.NotFound", 404)
    for ak, code, status in ((f"STWK{'0' * 20}", "InvalidAccessKeyId.NotFound", 404),
                             (os.environ["DISABLED_AK"], "InvalidAccessKeyId.Inactive", 400)):
        cfg = open_api.Config(access_key_id=ak, access_key_secret=SK, endpoint=ENDPOINT, protocol="HTTP", region_id="cn-hangzhou")
        if v2:
            cfg.signature_algorithm = "v2"
        tea_error(lambda: Client(cfg).describe_backup_tasks_with_options(
            rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE), RT), code, status)

# Throttling: a second server allows 3 requests/s per key.
cfg = open_api.Config(access_key_id=os.environ["SLOW_AK"], access_key_secret=os.environ["SLOW_SK"],
                      endpoint=os.environ["SLOW_ENDPOINT"], protocol="HTTP", region_id="cn-hangzhou")
slow = Client(cfg)
throttled = None
for _ in range(20):
    try:
        slow.describe_dbinstances_with_options(rds.DescribeDBInstancesRequest(region_id="cn-hangzhou"), RT)
    except ThrottlingException as e:
        throttled = e
        break
assert throttled is not None and throttled.code == "Throttling.User" and throttled.retry_after > 0, throttled
print(f"tea: MissingParameter, InvalidAction.NotFound, unknown/disabled key, Throttling.User (retry after {throttled.retry_after} ms) ok")

# The older core SDK (RPC HMAC-SHA1, JSON bytes back).
port = int(ENDPOINT.rsplit(":", 1)[1])


def core(req, secret=SK):
    req.set_endpoint("127.0.0.1")
    req.set_protocol_type("http")
    return json.loads(AcsClient(AK, secret, "cn-hangzhou", port=port).do_action_with_exception(req))


req = CreateBackupRequest()
req.set_DBInstanceId(INSTANCE)
job = core(req)["BackupJobId"]
while True:
    req = DescribeBackupTasksRequest()
    req.set_DBInstanceId(INSTANCE)
    req.set_BackupJobId(job)
    items = core(req)["Items"]["BackupJob"]
    assert len(items) == 1
    if items[0]["BackupStatus"] in ("Finished", "Failed"):
        break
    time.sleep(0.1)
assert items[0]["BackupStatus"] == "Finished" and items[0]["BackupId"], items
print(f"core sdk: backup job {job} -> set {items[0]['BackupId']}")
try:
    req = DescribeBackupTasksRequest()
    req.set_DBInstanceId(INSTANCE)
    core(req, secret="wrong")
    raise AssertionError("wrong secret accepted")
except ServerException as e:
    # The core SDK compares the server's string to sign with its own and
    # reports a matching one as a wrong secret.
    assert e.get_error_code() in ("SignatureDoesNotMatch", "InvalidAccessKeySecret"), e.get_error_code()
    assert e.get_http_status() == 400
from aliyunsdkrds.request.v20140815.DescribeBackupPolicyRequest import DescribeBackupPolicyRequest
from aliyunsdkrds.request.v20140815.ModifyBackupPolicyRequest import ModifyBackupPolicyRequest

req = ModifyBackupPolicyRequest()
req.set_DBInstanceId(INSTANCE)
req.set_PreferredBackupTime("03:00Z-04:00Z")
req.set_PreferredBackupPeriod("Tuesday")
core(req)
req = DescribeBackupPolicyRequest()
req.set_DBInstanceId(INSTANCE)
pol = core(req)
assert pol["PreferredBackupTime"] == "03:00Z-04:00Z" and pol["PreferredBackupPeriod"] == "Tuesday", pol
assert pol["BackupRetentionPeriod"] == 9, pol
print("core sdk: backup policy ok")

# Format=XML through the core SDK's do_action, which returns the bytes unparsed.
import xml.etree.ElementTree as ET

req = DescribeBackupTasksRequest()
req.set_DBInstanceId(INSTANCE)
req.set_BackupJobId(job)
req.set_accept_format("XML")
req.set_endpoint("127.0.0.1")
req.set_protocol_type("http")
root = ET.fromstring(AcsClient(AK, SK, "cn-hangzhou", port=port).do_action(req))
assert root.tag == "DescribeBackupTasksResponse", root.tag
jobs = root.findall("./Items/BackupJob")
assert len(jobs) == 1 and jobs[0].findtext("BackupJobId") == str(job), ET.tostring(root)
assert jobs[0].findtext("BackupStatus") == "Finished" and root.findtext("RequestId"), ET.tostring(root)
req = DescribeBackupTasksRequest()
req.set_DBInstanceId("rm-nosuchinstance00")
req.set_accept_format("XML")
req.set_endpoint("127.0.0.1")
req.set_protocol_type("http")
err = ET.fromstring(AcsClient(AK, SK, "cn-hangzhou", port=port).do_action(req))
assert err.tag == "Error" and err.findtext("Code") == "InvalidDBInstanceId.NotFound", ET.tostring(err)
print("core sdk: Format=XML ok")
print("all SDK checks passed")
sys.exit(0)
