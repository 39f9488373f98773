# attach_volume VOLUME_ID MOUNT_POINT: attaches an EBS volume to this instance, formats it only
# when blank (a replacement instance keeps the data) and mounts it. Used by the user data of the
# Kafka brokers and the schema store; needs awscli, xfsprogs and IMDSv2.
imds() {
  local token
  token=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

attach_volume() {
  local volume=$1 mount_point=$2 device="" _
  AWS_DEFAULT_REGION=$(imds placement/region)
  export AWS_DEFAULT_REGION
  aws ec2 attach-volume --volume-id "$volume" --instance-id "$(imds instance-id)" --device /dev/sdf
  aws ec2 wait volume-in-use --volume-ids "$volume"
  # On Nitro instances the volume shows up as an NVMe device whose serial is the volume id.
  for _ in $(seq 60); do
    device=$(lsblk -ndo PATH,SERIAL | awk -v id="${volume//-/}" '$2 == id { print $1 }')
    [ -n "$device" ] && break
    sleep 2
  done
  [ -n "$device" ] || { echo "volume $volume did not appear" >&2; return 1; }
  blkid "$device" || mkfs.xfs "$device"
  mkdir -p "$mount_point"
  grep -q "^$device " /etc/fstab || echo "$device $mount_point xfs defaults,noatime,nofail 0 2" >> /etc/fstab
  mount -a
}
