// ringmq on Azure: a VM Scale Set of brokers behind a Standard Load Balancer,
// and optionally the load-test rig in the same VNet.
//
//   az deployment group create -g RG -f deploy/azure/main.bicep -p deploy/azure/main.bicepparam
//
// See deploy/azure/README.md for the whole walk-through (TLS, passwords and
// ACL, the durable log on a data disk) and for what is not in the broker yet:
// clustering (#17). The load balancer probes the broker's /healthz on its
// admin listener (8080, never open to the Internet).

targetScope = 'resourceGroup'

@description('Azure region; the resource group\'s by default.')
param location string = resourceGroup().location

@description('Prefix of every resource name.')
@minLength(3)
@maxLength(20)
param namePrefix string = 'ringmq'

@description('Broker VMs in the scale set. Until clustering (#17) the brokers do not exchange messages: a subscriber only receives what is published through the same VM, so keep 1 unless clients are partitioned by VM (README.md). Plan about 500k active flows per VM (Azure\'s limit).')
@minValue(1)
@maxValue(1000)
param instanceCount int = 1

@description('Broker VM size. Dsv5: accelerated networking, 8 vCPUs and 32 GiB for D8s_v5.')
param vmSize string = 'Standard_D8s_v5'

@description('Administrator user of every VM (SSH key only).')
param adminUsername string = 'azureuser'

@description('SSH public key of the administrator.')
param adminSshPublicKey string

@description('Source address prefix allowed to reach the MQTT ports, e.g. your devices\' range or "Internet". Without passwordFile whoever reaches the ports can publish and subscribe.')
param mqttSourcePrefix string

@description('ringmq release binary or .tar.gz (https). Empty: build from source (sourceRef).')
param releaseUrl string = ''

@description('sha256 of releaseUrl; required with it.')
param releaseSha256 string = ''

@description('Git repository to build from when releaseUrl is empty.')
param sourceRepo string = 'https://github.com/ringmq/ringmq.git'

@description('Branch, tag or commit to build when releaseUrl is empty.')
param sourceRef string = ''

@description('Load balancer idle timeout in minutes (4-100). Must exceed 1.5 x the longest MQTT keep alive (limits.max_keepalive = 240 s in deploy/ringmq.toml, so more than 6): a client that pings within its keep alive then never loses its flow. TCP reset is on, so a flow that does time out is closed with a RST the client sees, not silently dropped.')
@minValue(4)
@maxValue(100)
param idleTimeoutMinutes int = 10

@description('MQTT over TLS on 8883 (and WebSocket over TLS on 8084 with enableWebSocket): opens the ports and serves them with tlsCertificatePem and tlsPrivateKeyPem, which are then required (the VM refuses to start the broker without them).')
param enableTls bool = false

@description('PEM certificate chain of the TLS listeners (server certificate first). From Key Vault: see README.md.')
param tlsCertificatePem string = ''

@description('PEM private key of tlsCertificatePem. Pass it from Key Vault with az.getSecret() in the .bicepparam file (README.md), not as a literal.')
@secure()
param tlsPrivateKeyPem string = ''

@description('MQTT over WebSocket (subprotocol mqtt, path /mqtt) on 8083, and on 8084 over TLS with enableTls.')
param enableWebSocket bool = false

@description('A password file (the lines `ringmq passwd FILE USER` or mosquitto_passwd write: hashes, never passwords). Set: every client must log in, anonymous clients are refused. Empty: anonymous clients allowed.')
@secure()
param passwordFile string = ''

@description('An ACL file in Mosquitto\'s syntax (user, topic, pattern lines). Empty: every authenticated client may use every topic.')
param aclFile string = ''

@description('Outbound through a NAT gateway (true) instead of the load balancer\'s outbound rule (false). A NAT gateway gives 64k SNAT ports per public IP shared by the subnet, on demand; the outbound rule preallocates ports per VM.')
param enableNatGateway bool = false

@description('Size in GiB of a managed data disk per broker, mounted at /var/lib/ringmq, holding the durable log (data_dir) with the durability below; 0 = none, memory only.')
@minValue(0)
@maxValue(32767)
param dataDiskSizeGB int = 0

@description('Durability of the log on the data disk (with dataDiskSizeGB > 0): always = a QoS 1/2 message is acknowledged once it is on disk; interval = synced every 10 ms; none = memory only.')
@allowed([
  'always'
  'interval'
  'none'
])
param durability string = 'always'

@description('Load-generator VMs of the test rig (0 = no rig).')
@minValue(0)
@maxValue(100)
param loadgenCount int = 0

@description('Secondary private addresses per load generator: each one adds about 55k connections per broker address.')
@minValue(0)
@maxValue(255)
param loadgenSecondaryIps int = 7

@description('Load-generator VM size.')
param loadgenVmSize string = 'Standard_D8s_v5'

@description('Source prefix allowed to SSH to the load generators (they get public addresses only when this is set). Empty: no SSH from outside the VNet.')
param sshSourcePrefix string = ''

var adminPort = 8080

module network 'modules/network.bicep' = {
  name: '${namePrefix}-network'
  params: {
    location: location
    namePrefix: namePrefix
    mqttSourcePrefix: mqttSourcePrefix
    enableTls: enableTls
    enableWebSocket: enableWebSocket
    enableNatGateway: enableNatGateway
    adminPort: adminPort
    sshSourcePrefix: sshSourcePrefix
  }
}

module lb 'modules/loadbalancer.bicep' = {
  name: '${namePrefix}-lb'
  params: {
    location: location
    namePrefix: namePrefix
    enableTls: enableTls
    enableWebSocket: enableWebSocket
    idleTimeoutMinutes: idleTimeoutMinutes
    outboundRule: !enableNatGateway
  }
}

var installValues = {
  url: releaseUrl
  sha: releaseSha256
  repo: sourceRepo
  ref: sourceRef
}

// The broker's cloud-init: install.env placeholders filled in one step at a
// time (base64 for files: no quote or newline reaches the shell file).
var brokerInit0 = loadTextContent('cloud-init.yaml')
var brokerInit1 = replace(replace(replace(replace(brokerInit0, '{{RINGMQ_RELEASE_URL}}', installValues.url), '{{RINGMQ_RELEASE_SHA256}}', installValues.sha), '{{RINGMQ_SOURCE_REPO}}', installValues.repo), '{{RINGMQ_SOURCE_REF}}', installValues.ref)
var brokerInit2 = replace(replace(brokerInit1, '{{RINGMQ_REQUIRE_TLS}}', enableTls ? '1' : '0'), '{{RINGMQ_TLS_CERT_B64}}', enableTls ? base64(tlsCertificatePem) : '')
var brokerInit3 = replace(brokerInit2, '{{RINGMQ_TLS_KEY_B64}}', enableTls ? base64(tlsPrivateKeyPem) : '')
var brokerInit4 = replace(replace(brokerInit3, '{{RINGMQ_PASSWD_B64}}', empty(passwordFile) ? '' : base64(passwordFile)), '{{RINGMQ_ACL_B64}}', empty(aclFile) ? '' : base64(aclFile))
var brokerInit5 = replace(replace(brokerInit4, '{{RINGMQ_WEBSOCKET}}', enableWebSocket ? '1' : '0'), '{{RINGMQ_DURABILITY}}', dataDiskSizeGB > 0 ? durability : '')

module vmss 'modules/vmss.bicep' = {
  name: '${namePrefix}-vmss'
  params: {
    location: location
    namePrefix: namePrefix
    instanceCount: instanceCount
    vmSize: vmSize
    adminUsername: adminUsername
    adminSshPublicKey: adminSshPublicKey
    subnetId: network.outputs.brokerSubnetId
    backendPoolId: lb.outputs.backendPoolId
    probeId: lb.outputs.probeId
    customData: base64(brokerInit5)
    dataDiskSizeGB: dataDiskSizeGB
  }
}

module rig 'modules/loadgen.bicep' = if (loadgenCount > 0) {
  name: '${namePrefix}-rig'
  params: {
    location: location
    namePrefix: namePrefix
    count: loadgenCount
    secondaryIps: loadgenSecondaryIps
    vmSize: loadgenVmSize
    adminUsername: adminUsername
    adminSshPublicKey: adminSshPublicKey
    subnetId: network.outputs.loadgenSubnetId
    publicSsh: !empty(sshSourcePrefix)
    customData: base64(replace(replace(replace(replace(loadTextContent('cloud-init-loadgen.yaml'), '{{RINGMQ_RELEASE_URL}}', installValues.url), '{{RINGMQ_RELEASE_SHA256}}', installValues.sha), '{{RINGMQ_SOURCE_REPO}}', installValues.repo), '{{RINGMQ_SOURCE_REF}}', installValues.ref))
  }
}

@description('Public address of the load balancer (MQTT on 1883).')
output mqttAddress string = lb.outputs.publicIp

@description('Commands to try the broker through the load balancer.')
output connectCommands array = concat([
  'mosquitto_sub -h ${lb.outputs.publicIp} -p 1883 -t \'hello/#\' -v${empty(passwordFile) ? '' : ' -u USER -P PASSWORD'}'
  'mosquitto_pub -h ${lb.outputs.publicIp} -p 1883 -t hello/azure -m "it works" -q 1${empty(passwordFile) ? '' : ' -u USER -P PASSWORD'}'
], enableTls ? [
  'mosquitto_sub -h YOUR.CERTIFICATE.NAME -p 8883 --cafile CA.pem -t \'hello/#\' -v${empty(passwordFile) ? '' : ' -u USER -P PASSWORD'} (YOUR.CERTIFICATE.NAME resolving to ${lb.outputs.publicIp})'
] : [])

@description('Name of the scale set (az vmss ...).')
output scaleSetName string = vmss.outputs.name

@description('Load generators: name, private address, public address (empty without sshSourcePrefix).')
output loadgens array = loadgenCount > 0 ? rig.outputs.machines : []
