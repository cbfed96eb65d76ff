// The brokers: a VM Scale Set of Ubuntu 24.04 LTS with accelerated
// networking, provisioned by cloud-init (deploy/azure/cloud-init.yaml),
// upgraded in rolling batches gated by the load balancer's probe.

param location string
param namePrefix string
param instanceCount int
param vmSize string
param adminUsername string
param adminSshPublicKey string
param subnetId string
param backendPoolId string
param probeId string
@description('base64 of the rendered cloud-init document.')
@secure()
param customData string
@description('GiB of the data disk at LUN 0; 0 = none.')
param dataDiskSizeGB int

resource vmss 'Microsoft.Compute/virtualMachineScaleSets@2024-03-01' = {
  // checkov:skip=CKV_AZURE_95: automatic OS image upgrades reimage brokers on Azure's schedule, dropping every session that is not on a data disk (memory only unless dataDiskSizeGB > 0); Ubuntu's unattended-upgrades patches in place, new images roll out with `az vmss update` + rolling upgrade (README.md)
  name: '${namePrefix}-vmss'
  location: location
  sku: {
    name: vmSize
    tier: 'Standard'
    capacity: instanceCount
  }
  properties: {
    orchestrationMode: 'Uniform'
    // Exactly instanceCount VMs: extra ones would join the pool briefly.
    overprovision: false
    upgradePolicy: {
      // New models (image, customData, size) roll out 20% at a time; a
      // batch must pass the load balancer probe before the next starts.
      mode: 'Rolling'
      rollingUpgradePolicy: {
        maxBatchInstancePercent: 20
        maxUnhealthyInstancePercent: 20
        maxUnhealthyUpgradedInstancePercent: 20
        pauseTimeBetweenBatches: 'PT30S'
      }
    }
    automaticRepairsPolicy: {
      // Replace a VM whose probe fails for 30 minutes (first boot included).
      enabled: true
      gracePeriod: 'PT30M'
    }
    virtualMachineProfile: {
      osProfile: {
        computerNamePrefix: namePrefix
        adminUsername: adminUsername
        customData: customData
        linuxConfiguration: {
          disablePasswordAuthentication: true
          provisionVMAgent: true
          ssh: {
            publicKeys: [
              {
                path: '/home/${adminUsername}/.ssh/authorized_keys'
                keyData: adminSshPublicKey
              }
            ]
          }
        }
      }
      storageProfile: {
        imageReference: {
          publisher: 'Canonical'
          offer: 'ubuntu-24_04-lts'
          sku: 'server'
          version: 'latest'
        }
        osDisk: {
          createOption: 'FromImage'
          caching: 'ReadWrite'
          managedDisk: {
            storageAccountType: 'Premium_LRS'
          }
        }
        dataDisks: dataDiskSizeGB > 0 ? [
          {
            lun: 0
            createOption: 'Empty'
            diskSizeGB: dataDiskSizeGB
            caching: 'None'
            managedDisk: {
              storageAccountType: 'Premium_LRS'
            }
          }
        ] : []
      }
      networkProfile: {
        // The load balancer's probe decides rolling-upgrade health.
        healthProbe: {
          id: probeId
        }
        networkInterfaceConfigurations: [
          {
            name: 'nic'
            properties: {
              primary: true
              enableAcceleratedNetworking: true
              ipConfigurations: [
                {
                  name: 'ipconfig'
                  properties: {
                    primary: true
                    subnet: {
                      id: subnetId
                    }
                    loadBalancerBackendAddressPools: [
                      {
                        id: backendPoolId
                      }
                    ]
                  }
                }
              ]
            }
          }
        ]
      }
      securityProfile: {
        // Temp disk and caches encrypted on the host (needs the
        // EncryptionAtHost feature registered once per subscription).
        encryptionAtHost: true
      }
      diagnosticsProfile: {
        // Serial console and boot log: cloud-init's errors show here.
        bootDiagnostics: {
          enabled: true
        }
      }
    }
  }
}

output name string = vmss.name
